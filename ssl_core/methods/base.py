"""What every SSL method provides to the training engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ssl_core.augment import MultiView, Normalization, ViewConfig, ViewSpec, pil_view
from ssl_core.batch_augment import BatchViews

if TYPE_CHECKING:
    from ssl_core.backbones import Backbone
    from ssl_core.teachers import Teacher

# The batch size at which base_lr is the peak lr, as in the lightly benchmarks' lr x batch/128.
LR_REFERENCE_BATCH_SIZE = 128


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

    What a method needs is said here, by the method, so that the pipeline, the
    benchmark and the tests never ask which method they hold:

    Class attributes:
        recipe: the method's recipe dataclass (:mod:`ssl_core.methods.recipes`).
        needs_teacher: trains against a frozen teacher, passed to :meth:`build`.
        scales_lr_with_batch: whether the peak lr grows linearly with the batch size
            (:meth:`peak_lr`).
        crop_scale: (min, max) area fraction of its random resized crops.
        optimizer: what it trains with by default: ``sgd``, or ``lars``
            (:mod:`ssl_core.optimizers`) for losses that are not scale-invariant.
        compiled_networks: the attributes holding the convolutional networks that
            ``torch.compile`` speeds up: the backbone, and the momentum or frozen teacher
            network that runs a forward every step beside it. Heads and losses stay eager.

    Attributes:
        backbone: maps (B, 3, H, W) images to (B, feature_dim) features.
        feature_dim: size of the backbone's features (the embedding size).
        num_views: how many random views of each image :meth:`training_step` needs.
        frozen_prefixes: state-dict prefixes of frozen modules (teachers) that are
            rebuilt from their own source and so are left out of checkpoints.
        gradient_clip_norm: max global gradient norm, or None for no clipping.
    """

    recipe: ClassVar[type]
    needs_teacher: ClassVar[bool] = False
    scales_lr_with_batch: ClassVar[bool] = True
    crop_scale: ClassVar[tuple[float, float]] = (0.08, 1.0)  # SimCLR's
    optimizer: ClassVar[str] = "sgd"  # the lightly benchmark's
    compiled_networks: ClassVar[tuple[str, ...]] = ("backbone",)
    num_views: int = 2
    frozen_prefixes: tuple[str, ...] = ()
    gradient_clip_norm: float | None = None
    # Some trainable parameters get no gradient on some steps: the engine then avoids fused SGD,
    # and DDP looks for the unused ones after every forward (find_unused_parameters).
    skips_gradients: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    @classmethod
    def build(
        cls, backbone: Backbone, recipe: Any = None, teacher: Teacher | None = None, num_images: int = 0
    ) -> SSLMethod:
        """The method around ``backbone`` with ``recipe`` (default: the recipe's defaults).

        Args:
            backbone: the network to train.
            recipe: an instance of :attr:`recipe`, or None for its defaults.
            teacher: the frozen teacher; required exactly when :attr:`needs_teacher`.
            num_images: size of the training set, for recipes that scale with it.

        Raises:
            ValueError: for a recipe of another method, or a teacher given to a method that takes none.
        """
        recipe = cls.checked_recipe(recipe)
        if teacher is not None:
            raise ValueError(f"{cls.__name__} trains without a teacher; got {teacher.description}")
        return cls(backbone.module, backbone.feature_dim, recipe)

    @classmethod
    def checked_recipe(cls, recipe: Any) -> Any:
        """``recipe``, or the defaults when None; refuses another method's recipe."""
        if recipe is None:
            return cls.recipe()
        if not isinstance(recipe, cls.recipe):
            raise ValueError(f"{cls.__name__} takes a {cls.recipe.__name__}, got {type(recipe).__name__}")
        return recipe

    @classmethod
    def peak_lr(cls, base_lr: float, batch_size: int, scale: bool | None = None) -> float:
        """``base_lr * batch_size / 128`` (linear scaling, Goyal et al. 2017,
        https://arxiv.org/abs/1706.02677) if ``scale``, else ``base_lr``; ``scale``
        None follows :attr:`scales_lr_with_batch`."""
        scale = cls.scales_lr_with_batch if scale is None else scale
        return base_lr * batch_size / LR_REFERENCE_BATCH_SIZE if scale else base_lr

    @classmethod
    def chosen_optimizer(cls, choice: str = "auto") -> str:
        """``choice`` (``sgd`` or ``lars``), or the method's own :attr:`optimizer` for ``auto``."""
        return cls.optimizer if choice == "auto" else choice

    @classmethod
    def view_config(cls, image_size: int, **settings: Any) -> ViewConfig:
        """Random-view settings for ``image_size`` px images with this method's crops,
        unless ``settings`` (any :class:`ViewConfig` field) say otherwise."""
        return ViewConfig(image_size=image_size, **{"crop_scale": cls.crop_scale, **settings})

    def view_specs(self, view: ViewConfig) -> list[ViewSpec]:
        """The views :meth:`training_step` trains on: ``num_views`` random views drawn by ``view``."""
        return [view.spec()] * self.num_views

    def train_transform(self, view: ViewConfig, normalization: Normalization) -> MultiView:
        """:meth:`view_specs` rendered per PIL image (the DataLoader path)."""
        return MultiView([pil_view(spec, normalization) for spec in self.view_specs(view)])

    def batch_transform(self, view: ViewConfig, normalization: Normalization) -> BatchViews:
        """:meth:`view_specs` rendered for a uint8 batch on the device (:class:`~ssl_core.device_data.DeviceImages`)."""
        return BatchViews(self.view_specs(view), normalization)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        """Loss of one batch; ``views`` holds num_views tensors of shape (B, 3, H, W)."""
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        """:meth:`training_step`, reached through ``__call__``.

        DistributedDataParallel averages gradients only for what runs through its own
        ``forward``, which calls this one; the engine calls the method (or its DDP
        wrapper) rather than ``training_step``.
        """
        return self.training_step(views)

    def before_step(self, step: int, total_steps: int) -> None:
        """Called by the engine before each training step (0-based ``step``).

        Methods with per-step schedules (EMA momentum, teacher temperature) set
        them here, from the precomputed schedule indexed by ``step``.
        """

    def after_optimizer_step(self) -> None:
        """Called by the engine after each optimizer step: EMA updates of target networks."""

    def compile_networks(self, mode: str | None = None) -> None:
        """``torch.compile`` each of :attr:`compiled_networks` in place (the state dict keeps its keys)."""
        for name in self.compiled_networks:
            getattr(self, name).compile(mode=mode)

    def compile_step(self, mode: str | None = None) -> None:
        """``torch.compile`` the whole training step in place: what the engine calls (:meth:`forward`,
        so :meth:`training_step`) becomes one graph of every network's forward, the heads and the loss,
        and its backward one compiled graph too (AOTAutograd).

        Where :meth:`compile_networks` leaves the heads, the losses and the glue between the forward calls
        eager (BYOL's and MoCo's four calls dispatch about twice SimCLR's operators a step), this fuses
        them too; convolutions and matrix products stay one library call each. On a CPU it cuts BYOL's
        operators per step from 4,003 (eager) and 1,605 (networks) to 1,218
        (``benchmarks/results/cpu-kernel-profile-compile``).

        Buffers the step updates (BatchNorm statistics, MoCo's memory bank, DINO's center) are updated
        by the graph. A Python number the step reads and a schedule changes (DINO's teacher temperature)
        is read as a tensor instead, since each new value would recompile the step. Random draws inside
        the step (distillation's mixup) come from torch's generator, as eager ones do (inductor's
        ``fallback_random``): the compiled run draws what the eager one would.
        """
        import torch._inductor  # noqa: PLC0415 (loaded by torch.compile anyway; here for its mode options)

        # torch.compile takes a mode or options, not both: the mode's options, with eager random draws.
        self.compile(options={**torch._inductor.list_mode_options(mode or "default"), "fallback_random": True})

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
