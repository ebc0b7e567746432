"""Knowledge distillation from a frozen teacher, LightlyTrain's "distillation v1".

A frozen teacher embeds one augmented view; the student's pooled features go
through a linear layer to the teacher's dimension. Both embeddings are
L2-normalized and compared through a FIFO queue of past teacher embeddings that
serve as pseudo-classes (:class:`~ssl_core.losses.QueueDistillationLoss`). As in
LightlyTrain, the batch is mixed with a shuffled copy of itself (mixup, lambda ~
U(0, 1)) and gradients are clipped to norm 1. On several processes (DDP) the queue
receives the teacher embeddings of all ranks, so it is the same on every rank.

References: Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022, https://arxiv.org/abs/2106.05237; LightlyTrain's
distillation docs, https://docs.lightly.ai/train/stable/methods/distillation.html.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.distributed import concat_all_gather
from ssl_core.losses import QueueDistillationLoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import DistillationConfig

if TYPE_CHECKING:
    from ssl_core.backbones import Backbone
    from ssl_core.teachers import Teacher


class Distillation(SSLMethod):
    """Student backbone + linear projection trained to match a frozen teacher.

    Args:
        backbone: the student, (B, 3, H, W) -> (B, feature_dim).
        feature_dim: the student's feature size.
        teacher: frozen module (B, 3, H, W) -> (B, teacher_dim); put in eval mode
            and excluded from gradients and checkpoints here.
        teacher_dim: the teacher's embedding size.
        config: the recipe, with ``queue_size`` resolved to a number
            (:meth:`~ssl_core.methods.recipes.DistillationConfig.resolved_queue_size`).

    Raises:
        ValueError: if ``config.queue_size`` is still ``"auto"``.
    """

    recipe = DistillationConfig
    needs_teacher = True
    num_views = 1
    # LightlyTrain's distillation views: milder crops than SimCLR's (0.08, 1).
    crop_scale = (0.14, 1.0)
    frozen_prefixes = ("teacher.",)
    compiled_networks = ("backbone", "teacher")

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        teacher: nn.Module,
        teacher_dim: int,
        config: DistillationConfig,
    ) -> None:
        super().__init__(backbone, feature_dim)
        if config.queue_size == "auto":
            raise ValueError(
                "queue_size = 'auto': resolve it for the dataset first (DistillationConfig.resolved_queue_size)"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.student_head = nn.Linear(feature_dim, teacher_dim)
        nn.init.trunc_normal_(self.student_head.weight, std=0.02)
        self.criterion = QueueDistillationLoss(config.temperature)
        self.mixup = config.mixup
        self.gradient_clip_norm = config.gradient_clip_norm
        # Zeros until filled: an empty slot gives every image the same logit, so it
        # adds a constant to both distributions and carries no signal.
        self.register_buffer("queue", torch.zeros(config.queue_size, teacher_dim))

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        recipe: DistillationConfig | None = None,
        teacher: Teacher | None = None,
        num_images: int = 0,
    ) -> Distillation:
        """Distills ``teacher`` into ``backbone``; an ``"auto"`` queue is sized for ``num_images``."""
        recipe = cls.checked_recipe(recipe)
        if teacher is None:
            raise ValueError("distillation needs a frozen teacher to learn from")
        resolved = replace(recipe, queue_size=recipe.resolved_queue_size(num_images))
        return cls(backbone.module, backbone.feature_dim, teacher.module, teacher.embedding_dim, resolved)

    def train(self, mode: bool = True) -> Distillation:
        super().train(mode)
        self.teacher.eval()  # BatchNorm/Dropout of the teacher stay frozen.
        return self

    @torch.no_grad()
    def embed_teacher(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher(images).flatten(1).float(), dim=1)  # (B, D)

    @torch.no_grad()
    def enqueue(self, teacher_embeddings: torch.Tensor) -> None:
        """FIFO update: the newest embeddings go to the front, the oldest drop off."""
        b, q = teacher_embeddings.shape[0], self.queue.shape[0]
        if b >= q:
            self.queue.copy_(teacher_embeddings[:q])
        else:
            self.queue.copy_(torch.cat([teacher_embeddings, self.queue[: q - b]]))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        (images,) = views
        if self.mixup:
            images = mixup(images)
        teacher = self.embed_teacher(images)  # (B, D)
        features = self.backbone(images).flatten(1)  # (B, f)
        student = F.normalize(self.student_head(features).float(), dim=1)  # (B, D)
        # As in LightlyTrain v1 the current batch joins the queue before the loss,
        # so each image also has its own teacher embedding as a pseudo-class. All ranks'
        # embeddings join it (LightlyTrain keeps one queue per GPU): the queues stay equal,
        # so the checkpoint, written by rank 0, holds every rank's and resuming is exact.
        self.enqueue(concat_all_gather(teacher))
        return StepOutput(loss=self.criterion(teacher, student, self.queue), features=features.detach())


def mixup(images: torch.Tensor) -> torch.Tensor:
    """Convex combination of the batch with a random permutation of itself.

    Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018,
    https://arxiv.org/abs/1710.09412; one lambda ~ U(0, 1) per batch.
    """
    # lambda stays a tensor on the images' device: reading it on the host would make a GPU step wait.
    lam = torch.rand((), device=images.device)
    permutation = torch.randperm(images.shape[0], device=images.device)
    # The permuted batch by gather, not images[permutation] (the same pixels): torch 2.11's inductor, the GPU
    # machine's, fails to compile x[randperm(len(x))] in a compiled step (its randperm-index pattern; 2.14 does not).
    shuffled = images.gather(0, permutation.view(-1, 1, 1, 1).expand_as(images))
    return lam * images + (1.0 - lam) * shuffled
