"""Queue-based distillation loss of LightlyTrain's "distillation v1".

The teacher embeddings collected in a queue act as the weights of a pseudo
classifier (one pseudo-class per queued image). Teacher and student embeddings are
both projected onto that queue; the student matches the teacher's soft pseudo-label
distribution under KL divergence. The idea of a patient, consistent teacher follows
Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
CVPR 2022, https://arxiv.org/abs/2106.05237; the queue as classifier is LightlyTrain's
(https://docs.lightly.ai/train/stable/methods/distillation.html).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QueueDistillationLoss(nn.Module):
    """KL(softmax(t Q^T / tau) || softmax(s Q^T / tau)), averaged over the batch.

    Letters: b = batch size, d = teacher embedding dim, q = queue size.

    Args:
        temperature: tau, 0.07 in LightlyTrain.

    Raises:
        ValueError: if temperature is not positive.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, teacher: torch.Tensor, student: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """Args: teacher (b, d) and student (b, d) L2-normalized embeddings, queue (q, d)."""
        teacher_logits = teacher.float() @ queue.float().T / self.temperature  # (b, q)
        student_logits = student.float() @ queue.float().T / self.temperature  # (b, q)
        # The teacher is the target: no gradient flows into it or into the queue.
        target_log_probs = F.log_softmax(teacher_logits.detach(), dim=1)
        student_log_probs = F.log_softmax(student_logits, dim=1)
        return F.kl_div(student_log_probs, target_log_probs, reduction="batchmean", log_target=True)
