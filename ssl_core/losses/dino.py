"""DINO's self-distillation loss, and its teacher centering as pure functions.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.14294 (Algorithm 1, sec. 3.1).

The center is state, but nothing here holds it: :func:`softmax_center_teacher` reads
it and :func:`next_center` returns its successor. The method owns the buffer and
updates it with an explicit call, as DINOv2's meta-architecture does; lightly's
``DINOLoss`` instead updates its center inside ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.distributed import all_reduce_mean_


def softmax_center_teacher(
    teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """Teacher targets: softmax((g_t(x) - C) / tau_t), centered then sharpened.

    Args:
        teacher_logits: (N, K) teacher head outputs.
        center: (1, K) running mean of teacher outputs.
        temperature: tau_t, a number or a 0-dim tensor; low values (0.04-0.07) sharpen.

    Returns:
        (N, K) probabilities, detached: the teacher gets no gradient.
    """
    return F.softmax((teacher_logits.detach().float() - center) / temperature, dim=-1)


def next_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """C <- m C + (1 - m) mean(teacher outputs), Algorithm 1's center update.

    On several processes (DDP) the mean is over the teacher outputs of all ranks, as
    in DINO's ``update_center`` (an all-reduce of the batch sums), so every rank keeps
    the same center, the one a single process would compute on the whole batch. That
    makes it a collective: every rank must call it, with the same number of rows.

    Args:
        center: (1, K) current center.
        teacher_logits: (N, K) teacher outputs of every global crop of this rank's batch.
        momentum: m, 0.9 in the paper.

    Returns:
        (1, K) new center; ``center`` itself is left untouched.
    """
    batch_center = teacher_logits.detach().float().mean(dim=0, keepdim=True)  # (1, K)
    # Every rank holds as many rows, so the mean of the ranks' means is the global mean.
    all_reduce_mean_(batch_center)
    return momentum * center + (1.0 - momentum) * batch_center


class DINOLoss(nn.Module):
    """Cross-entropy H(P_t, P_s) between teacher targets and student predictions.

    Every teacher (global) crop is a target for every student crop except itself;
    the loss is the mean over those pairs and over the batch (Algorithm 1 with
    multi-crop, sec. 3.1). The teacher crops are the first ``len(teacher_probs)``
    student crops, in the same order.

    Letters: t = teacher crops, v = student crops, b = batch size, k = output dim.

    Args:
        student_temperature: tau_s, 0.1 in the paper.

    Raises:
        ValueError: if student_temperature is not positive.

    Example:
        >>> targets = [softmax_center_teacher(t, center, 0.04) for t in teacher_logits]
        >>> loss = DINOLoss(0.1)(student_logits, targets)  # lists of (b, k)
    """

    def __init__(self, student_temperature: float = 0.1) -> None:
        super().__init__()
        if student_temperature <= 0:
            raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
        self.student_temperature = student_temperature

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over all (teacher crop i, student crop j != i) pairs.

        Args:
            student_logits: one (b, k) tensor per crop, global crops first.
            teacher_probs: one (b, k) tensor per global crop, from
                :func:`softmax_center_teacher`.

        Raises:
            ValueError: if no pair of distinct crops exists.
        """
        num_teacher, num_student = len(teacher_probs), len(student_logits)
        num_pairs = num_teacher * num_student - min(num_teacher, num_student)
        if num_pairs < 1:
            raise ValueError(
                f"DINOLoss needs two distinct crops, got {num_teacher} teacher and {num_student} student crop(s)"
            )
        targets = torch.stack(teacher_probs).detach().float()  # (t, b, k)
        log_probs = F.log_softmax(torch.stack(student_logits).float() / self.student_temperature, dim=-1)  # (v, b, k)
        batch_size = targets.shape[1]
        # Autocast would run einsum in bf16/fp16; the reference computes this sum in fp32.
        with torch.autocast(device_type=log_probs.device.type, enabled=False):
            cross_entropy = -torch.einsum("tbk,vbk->tv", targets, log_probs) / batch_size  # (t, v)
        # Teacher crop i and student crop i are the same image crop: no pair.
        same_crop = torch.eye(num_teacher, num_student, dtype=torch.bool, device=cross_entropy.device)
        return cross_entropy.masked_fill(same_crop, 0.0).sum() / num_pairs
