"""The lightly side of ``benchmarks/lightly_side_by_side.py``: lightly's own SimCLR and BYOL, and a plain loop.

Each model is set up as lightly's CIFAR-10 benchmark sets it up (heads, losses and
transforms from the ``lightly`` package, imported only when the benchmark runs);
:func:`train_lightly` trains one with the engine's optimizer, schedule and settings,
and none of its code.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_core.engine import TrainConfig
from ssl_core.precision import autocast, resolve_device, seed_everything
from ssl_core.schedules import cosine_schedule

INSTALL_HINT = (
    "this benchmark needs the lightly package, which the pipeline does not depend on: install it with "
    "`pip install --no-deps lightly` (tested with 1.6.0; --no-deps keeps pytorch-lightning and its pins "
    "out of the environment), or `pip install --no-deps --target DIR lightly` and run with PYTHONPATH=DIR; "
    "the dev extras (`pip install -e '.[dev]'`) install it with its dependencies"
)


def import_lightly() -> ModuleType:
    """The lightly modules this benchmark uses, imported only when it runs.

    Raises:
        ImportError: naming how to install lightly, when it or one of its modules is missing.
    """
    try:
        import lightly
        import lightly.loss
        import lightly.models
        import lightly.models.modules
        import lightly.models.utils
        import lightly.transforms
        import lightly.transforms.byol_transform
        import lightly.utils.scheduler
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return lightly


# The name by which lightly_benchmark.py --backbone asks for lightly_cifar10_backbone.
LIGHTLY_CIFAR10_BACKBONE = "lightly_resnet18_cifar"


def lightly_cifar10_backbone(lightly: ModuleType) -> nn.Module:
    """The ResNet-18 of lightly's CIFAR-10 benchmark: ``ResNetGenerator("resnet-18")``'s children but its classifier.

    Same layers and parameter count as our ``resnet18_cifar``, two differences:

    - no ReLU after the stem: the generator applies it in ``forward``, and the benchmark keeps
      only its modules (``nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))``);
    - PyTorch's default initialization (Kaiming uniform, a = sqrt(5)) where torchvision's ResNet
      draws Kaiming normal (fan out): the block convolutions start with 3 to 6 times smaller squared
      norms. BatchNorm follows each, so their effective learning rate is that much larger until
      weight decay evens the norms out.

    Returns (B, 512) features, as our backbones.
    """
    resnet = lightly.models.ResNetGenerator("resnet-18")
    return nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class LightlySimCLR(nn.Module):
    """SimCLR as lightly's CIFAR-10 benchmark writes it (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

    One backbone forward per view, so BatchNorm sees each view alone (ours runs both in one).
    """

    def __init__(self, lightly: ModuleType, backbone: nn.Module, feature_dim: int, recipe: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = lightly.models.modules.SimCLRProjectionHead(
            feature_dim, recipe.projection_hidden_dim, recipe.projection_dim
        )
        self.criterion = lightly.loss.NTXentLoss(temperature=recipe.temperature)

    @staticmethod
    def transform(lightly: ModuleType, image_size: int) -> Callable:
        """The views of lightly's CIFAR-10 benchmark: SimCLR's, milder color jitter, no blur at 32 px."""
        return lightly.transforms.SimCLRTransform(input_size=image_size, cj_strength=0.5, gaussian_blur=0.0)

    def before_step(self, step: int, total_steps: int) -> None:
        """SimCLR keeps no state between steps."""

    def training_step(self, views: list[torch.Tensor]) -> torch.Tensor:
        x0, x1 = views  # (B, 3, H, W) each
        z0 = self.projection_head(self.backbone(x0).flatten(1))  # (B, p)
        z1 = self.projection_head(self.backbone(x1).flatten(1))  # (B, p)
        return self.criterion(z0, z1)


class LightlyBYOL(nn.Module):
    """BYOL as lightly writes it (Grill et al. 2020, https://arxiv.org/abs/2006.07733).

    The target follows the online network by ``update_momentum`` at the start of each
    step, with a momentum rising from the recipe's ``base_momentum`` to 1 by lightly's
    ``cosine_schedule`` (lightly's BYOL examples; its CIFAR-10 benchmark keeps 0.99).
    """

    def __init__(self, lightly: ModuleType, backbone: nn.Module, feature_dim: int, recipe: Any) -> None:
        super().__init__()
        heads = lightly.models.modules
        self.backbone = backbone
        self.projection_head = heads.BYOLProjectionHead(
            feature_dim, recipe.projection_hidden_dim, recipe.projection_dim
        )
        self.prediction_head = heads.BYOLPredictionHead(
            recipe.projection_dim, recipe.prediction_hidden_dim, recipe.projection_dim
        )
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        lightly.models.utils.deactivate_requires_grad(self.backbone_momentum)
        lightly.models.utils.deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = lightly.loss.NegativeCosineSimilarity()
        self.base_momentum = recipe.base_momentum
        self._update_momentum = lightly.models.utils.update_momentum
        self._cosine_schedule = lightly.utils.scheduler.cosine_schedule

    @staticmethod
    def transform(lightly: ModuleType, image_size: int) -> Callable:
        """The views of lightly's CIFAR-10 benchmark: BYOL's two asymmetric views, no blur at 32 px."""
        views = lightly.transforms.byol_transform
        return lightly.transforms.BYOLTransform(
            view_1_transform=views.BYOLView1Transform(input_size=image_size, gaussian_blur=0.0),
            view_2_transform=views.BYOLView2Transform(input_size=image_size, gaussian_blur=0.0),
        )

    def before_step(self, step: int, total_steps: int) -> None:
        """Moves the target towards the online network, outside autocast: the EMA stays in fp32."""
        momentum = self._cosine_schedule(step, total_steps, self.base_momentum, 1.0)
        self._update_momentum(self.backbone, self.backbone_momentum, momentum)
        self._update_momentum(self.projection_head, self.projection_head_momentum, momentum)

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))  # (B, p)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        # detach(): BYOL's stop-gradient on the target (sec. 3.1).
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(1)).detach()  # (B, p)

    def training_step(self, views: list[torch.Tensor]) -> torch.Tensor:
        x0, x1 = views  # (B, 3, H, W) each
        p0, z0 = self.online(x0), self.target(x0)
        p1, z1 = self.online(x1), self.target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


LIGHTLY_MODELS = {"simclr": LightlySimCLR, "byol": LightlyBYOL}
METHODS = tuple(LIGHTLY_MODELS)  # the methods with a lightly counterpart here


@dataclass(frozen=True)
class EpochTime:
    seconds: float
    loss: float


def train_lightly(
    model: nn.Module, dataset: Dataset, config: TrainConfig, on_step: Callable[[int], None]
) -> list[EpochTime]:
    """The plain loop around a lightly model: the engine's optimizer, schedule and settings, nothing of its code.

    Each epoch is timed from its DataLoader's start to its last step, as the engine times them;
    ``on_step(epoch)`` runs after every optimizer step.
    """
    device = resolve_device(config.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = len(dataset) // config.batch_size
    lr_schedule = cosine_schedule(config.lr, config.epochs * steps_per_epoch)  # the engine's schedule
    epochs = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        # Reseeded per epoch like the engine; the order need not match ours, the views differ anyway.
        generator = seed_everything(config.seed * 1_000 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.num_workers,
            generator=generator,
        )
        model.train()
        loss_sum = torch.zeros((), device=device)
        for step, (views, _labels) in enumerate(loader):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule[global_step]
            views = [v.to(device, memory_format=memory_format, non_blocking=True) for v in views]
            model.before_step(global_step, len(lr_schedule))
            with autocast(device, config.precision):
                loss = model.training_step(views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            on_step(epoch)
        mean_loss = (loss_sum / steps_per_epoch).item()  # syncs a GPU before the clock stops
        epochs.append(EpochTime(time.perf_counter() - started, mean_loss))
    return epochs
