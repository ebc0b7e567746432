"""What every SSL method provides to the training engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass
class StepOutput:
    """Result of one training step.

    Attributes:
        loss: scalar to minimize.
        features: (B, feature_dim) backbone features of the first view, detached;
            the engine watches their spread to detect collapse.
    """

    loss: torch.Tensor
    features: torch.Tensor


class SSLMethod(nn.Module):
    """A student backbone plus whatever a method adds to train it.

    Subclasses implement :meth:`training_step`. The engine optimizes
    :meth:`trainable_parameters`, checkpoints :meth:`checkpoint_state` and keeps
    ``backbone`` as the product: the embedding model that is evaluated and exported.

    Attributes:
        backbone: maps (B, 3, H, W) images to (B, feature_dim) features.
        feature_dim: size of the backbone's features (the embedding size).
        num_views: how many random views of each image :meth:`training_step` needs.
        frozen_prefixes: state-dict prefixes of frozen modules (teachers) that are
            rebuilt from their own source and so are left out of checkpoints.
        gradient_clip_norm: max global gradient norm, or None for no clipping.
    """

    num_views: int = 2
    frozen_prefixes: tuple[str, ...] = ()
    gradient_clip_norm: float | None = None

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        """Loss of one batch; ``views`` holds num_views tensors of shape (B, 3, H, W)."""
        raise NotImplementedError

    def before_step(self, step: int, total_steps: int) -> None:
        """Called by the engine before each training step (0-based ``step``).

        Methods with per-step schedules (EMA momentum, teacher temperature) set
        them here, from the precomputed schedule indexed by ``step``.
        """

    def after_optimizer_step(self) -> None:
        """Called by the engine after each optimizer step: EMA updates of target networks."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen modules."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state`; only frozen keys may be missing."""
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self.frozen_prefixes)]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"Checkpoint does not match the {type(self).__name__} model: "
                f"missing {missing}, unexpected {result.unexpected_keys}"
            )
