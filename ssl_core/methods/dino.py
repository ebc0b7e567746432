"""DINO: self-distillation with no labels, a student matching an EMA teacher.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.14294.

The student sees every crop (2 global, several local; see
:func:`ssl_core.multicrop.multicrop_transform`), the teacher only the global ones.
Both end in the DINO head, whose K outputs act as soft pseudo-classes. The teacher's
outputs are centered (against collapse onto one dimension) and sharpened with a low
temperature (against collapse onto the uniform distribution), and the student
predicts them across crops (:class:`~ssl_core.losses.dino.DINOLoss`). The teacher is
an exponential moving average of the student; the center a moving average of the
teacher's outputs, updated explicitly after each loss.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ssl_core.augment import ViewConfig, ViewSpec
from ssl_core.losses.dino import DINOLoss, next_center, softmax_center_teacher
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import DINOConfig
from ssl_core.momentum import cosine_momentum, ema_update, frozen_copy
from ssl_core.multicrop import multicrop_specs


def teacher_temperature_at(step: int, total_steps: int, warmup: float, final: float, warmup_fraction: float) -> float:
    """Linear warm-up of tau_t from ``warmup`` at step 0 to ``final``, then constant."""
    warmup_steps = round(warmup_fraction * total_steps)
    if step >= warmup_steps:
        return final
    return warmup + (final - warmup) * step / warmup_steps


class DINOProjectionHead(nn.Module):
    """3-layer MLP (GELU) -> bottleneck -> L2 norm -> weight-normalized linear to K.

    The last layer is w = g v / ||v|| per output (Salimans & Kingma, 2016,
    https://arxiv.org/abs/1602.07868) with the gain g fixed to 1: every pseudo-class
    prototype has unit norm (the reference code's ``norm_last_layer=True``).
    """

    def __init__(self, input_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, output_dim, bias=False))
        self.last_layer_gain.data.fill_(1.0)
        self.last_layer_gain.requires_grad_(False)

    @property
    def last_layer_gain(self) -> nn.Parameter:
        """g, (K, 1), fixed to 1."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def last_layer_direction(self) -> nn.Parameter:
        """v, (K, bottleneck_dim), the trained part of the last layer."""
        return self.last_layer.parametrizations.weight.original1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)  # (N, bottleneck)
        return self.last_layer(z)  # (N, K)


def features_by_resolution(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Backbone features of all views, one forward per run of equally sized views.

    As DINO's ``MultiCropWrapper``: global and local crops cannot share a batch, and
    BatchNorm sees each resolution's own statistics.

    Returns:
        (len(views) * B, f) features in the order of ``views``.
    """
    groups: list[list[torch.Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape[-2:] == view.shape[-2:]:
            groups[-1].append(view)
        else:
            groups.append([view])
    return torch.cat([backbone(torch.cat(group)).flatten(1) for group in groups])


class DINO(SSLMethod):
    """Student backbone + DINO head, distilled from their EMA teacher.

    ``views`` follow :meth:`view_specs`, DINO's multi-crop: two
    global crops, then ``config.multicrop.num_local_crops`` local crops. The teacher
    and the center are state of the run and are checkpointed (no ``frozen_prefixes``).

    Args:
        backbone: the student, (B, 3, H, W) -> (B, feature_dim), for any H, W it gets.
        feature_dim: the backbone's feature size.
        config: the recipe.
    """

    recipe = DINOConfig
    compiled_networks = ("backbone", "teacher_backbone")
    skips_gradients = True  # the last layer, frozen for the first steps

    def __init__(self, backbone: nn.Module, feature_dim: int, config: DINOConfig = DINOConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.config = config
        self.num_views = config.multicrop.num_views
        self.gradient_clip_norm = config.gradient_clip_norm
        self.head = DINOProjectionHead(feature_dim, config.hidden_dim, config.bottleneck_dim, config.output_dim)
        # The teacher starts as the student (Algorithm 1: gt.params = gs.params).
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(config.student_temperature)
        self.register_buffer("center", torch.zeros(1, config.output_dim))
        # Set per step by before_step. The temperature is a tensor, filled in place, because the step reads it:
        # a compiled step (compile_step) takes it as an input rather than recompiling for each new value.
        # Not persistent: the schedule sets it again from the step, so checkpoints keep their keys.
        self.register_buffer("teacher_temperature", torch.tensor(config.warmup_teacher_temperature), persistent=False)
        self.momentum = config.base_momentum

    def view_specs(self, view: ViewConfig) -> list[ViewSpec]:
        """Multi-crop views (``config.multicrop``) with global crops of ``view.image_size``.

        Only the image size is taken from ``view``: DINO's crops, jitter, blur and
        solarization are its own recipe's.
        """
        return multicrop_specs(self.config.multicrop, view.image_size)

    def before_step(self, step: int, total_steps: int) -> None:
        c = self.config
        self.teacher_temperature.fill_(
            teacher_temperature_at(
                step, total_steps, c.warmup_teacher_temperature, c.teacher_temperature, c.warmup_fraction
            )
        )
        self.momentum = cosine_momentum(step, total_steps, c.base_momentum)
        # No gradient at all (not a zero one): SGD then skips the layer, weight decay
        # and momentum included, as the reference code's grad = None.
        frozen = step < round(c.freeze_last_layer_fraction * total_steps)
        self.head.last_layer_direction.requires_grad_(not frozen)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        # The last layer counts even while it is frozen: the engine builds its optimizer once.
        direction = self.head.last_layer_direction
        return (p for p in self.parameters() if p.requires_grad or p is direction)

    @torch.no_grad()
    def forward_teacher(self, global_views: list[torch.Tensor]) -> torch.Tensor:
        """Teacher logits of the global crops, (len(global_views) * B, K)."""
        return self.teacher_head(features_by_resolution(self.teacher_backbone, global_views))

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- next_center(center, teacher_logits); call once per step, after the loss."""
        self.center.copy_(next_center(self.center, teacher_logits, self.config.center_momentum))

    def after_optimizer_step(self) -> None:
        ema_update(self.backbone, self.teacher_backbone, self.momentum)
        ema_update(self.head, self.teacher_head, self.momentum)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        if len(views) != self.num_views:
            raise ValueError(
                f"DINO expects {self.num_views} views (2 global + {self.config.multicrop.num_local_crops} local), "
                f"got {len(views)}; build them from DINO.view_specs"
            )
        batch_size = views[0].shape[0]
        teacher_logits = self.forward_teacher(views[:2])  # (2B, K)
        features = features_by_resolution(self.backbone, views)  # (V B, f)
        student_logits = self.head(features)  # (V B, K)
        teacher_probs = softmax_center_teacher(teacher_logits, self.center, self.teacher_temperature)  # (2B, K)
        loss = self.criterion(list(student_logits.chunk(self.num_views)), list(teacher_probs.chunk(2)))
        # After the loss, which used the previous center (Algorithm 1).
        self.update_center(teacher_logits)
        return StepOutput(loss=loss, features=features[:batch_size].detach())
