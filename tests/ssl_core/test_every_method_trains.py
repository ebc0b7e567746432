"""Every method through the real engine on real images: exact resume, and collapse is flagged.

Small heads and a one-convolution backbone keep each run to a few seconds; the
recipes themselves are tested per method against their papers and lightly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.backbones import Backbone
from ssl_core.data import ManifestDataset
from ssl_core.engine import StepInfo, TrainConfig, train
from ssl_core.methods import (
    METHOD_NAMES,
    BarlowTwinsConfig,
    BYOLConfig,
    DINOConfig,
    DistillationConfig,
    MoCoConfig,
    MultiCropConfig,
    SimCLRConfig,
    SimSiamConfig,
    VICRegConfig,
)
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.factory import build_method, method_class
from ssl_core.teachers import Teacher
from tests.ssl_core.tiny import tiny_backbone

FEATURE_DIM = 16
LOCAL_CROPS = 2

# Every method of ssl_core.methods.RECIPES with small heads; a new method fails here until it has one.
SMALL_RECIPES = {
    "distillation": DistillationConfig(queue_size=32),
    "simclr": SimCLRConfig(projection_hidden_dim=32, projection_dim=16),
    "moco": MoCoConfig(memory_bank_size=32, projection_hidden_dim=32, projection_dim=16),
    "simsiam": SimSiamConfig(projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=8),
    "barlowtwins": BarlowTwinsConfig(projection_hidden_dim=32, projection_dim=32),
    "byol": BYOLConfig(projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32),
    "dino": DINOConfig(
        multicrop=MultiCropConfig(num_local_crops=LOCAL_CROPS), hidden_dim=32, bottleneck_dim=16, output_dim=64
    ),
    "vicreg": VICRegConfig(projection_hidden_dim=32, projection_dim=32),
}


def build(name: str, seed: int = 0) -> SSLMethod:
    torch.manual_seed(seed)
    backbone = Backbone(tiny_backbone(FEATURE_DIM), FEATURE_DIM, "tiny")
    teacher = Teacher(tiny_backbone(8).eval(), 8, "tiny teacher") if method_class(name).needs_teacher else None
    return build_method(name, backbone, SMALL_RECIPES[name], teacher=teacher)


METHODS = METHOD_NAMES


def dataset_for(method: SSLMethod, cifar_folder: Path) -> ManifestDataset:
    """The method's own views (DINO's multi-crop included) of the 32 px images."""
    transform = method.train_transform(method.view_config(32), Normalization())
    return ManifestDataset(cifar_folder, splits=["train"], transform=transform)


def config(epochs: int) -> TrainConfig:
    # A checkpoint after every epoch: the resume test crashes in the second.
    return TrainConfig(
        epochs=epochs, batch_size=16, lr=0.05, seed=3, device="cpu", precision="fp32", checkpoint_interval_s=0.0
    )


def assert_trains_like(actual: SSLMethod, expected: SSLMethod, tolerance: float, label: str) -> None:
    """``actual`` ends with ``expected``'s checkpoint keys and, within ``tolerance``, its weights and buffers."""
    want = expected.state_dict()
    assert actual.state_dict().keys() == want.keys()
    for key, value in actual.state_dict().items():
        torch.testing.assert_close(
            value, want[key], atol=tolerance, rtol=tolerance, msg=lambda detail, key=key: f"{label}: {key}: {detail}"
        )


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", METHODS)
def test_resume_after_interruption_gives_the_same_weights(name: str, cifar_folder: Path, tmp_path: Path) -> None:
    """Momentum networks, memory banks, queues and DINO's center must all survive the checkpoint."""
    uninterrupted = build(name)
    data = dataset_for(uninterrupted, cifar_folder)
    history = train(uninterrupted, data, config(epochs=2), tmp_path / "a", fingerprint=name)
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in history.epochs)

    def crash_in_second_epoch(info: StepInfo) -> None:
        if info.epoch == 1 and info.step_in_epoch == 1:
            raise Interrupt

    interrupted = build(name)
    with pytest.raises(Interrupt):
        train(interrupted, data, config(epochs=2), tmp_path / "b", fingerprint=name, on_step=crash_in_second_epoch)
    resumed = build(name)  # a new process would rebuild the model from scratch
    history = train(resumed, data, config(epochs=2), tmp_path / "b", resume=True, fingerprint=name)
    assert history.resumed_from_epoch == 1
    expected, actual = uninterrupted.state_dict(), resumed.state_dict()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{name}: {key} differs after resume"


@pytest.mark.parametrize("name", ["byol", "distillation"])
def test_compiling_covers_the_second_network_and_trains_like_eager(
    name: str, cifar_folder: Path, tmp_path: Path
) -> None:
    """``compile`` compiles the momentum target (BYOL's, as MoCo's and DINO's) or the frozen teacher beside the
    backbone, each in place: the same checkpoint keys and, up to float rounding, the eager run's weights."""
    eager = build(name)
    data = dataset_for(eager, cifar_folder)
    train(eager, data, config(epochs=1), tmp_path / "eager")
    compiled = build(name)
    assert len(compiled.compiled_networks) == 2
    train(compiled, data, dataclasses.replace(config(epochs=1), compile="networks"), tmp_path / "compiled")
    for network in compiled.compiled_networks:
        assert getattr(compiled, network)._compiled_call_impl is not None, network
    assert_trains_like(compiled, eager, tolerance=1e-4, label=name)


# What a compiled step has to carry beyond SimCLR's plain forward and loss (whose compiled step
# test_distributed.py compares with eager, inside DDP): BYOL's no-grad target forwards, MoCo's memory bank
# written inside the step, DINO's multi-crop shapes, center and per-step temperature, distillation's frozen
# teacher, queue and random mixup. SimSiam, Barlow Twins and VICReg are SimCLR's shape with another loss, left
# out of CI's 15 minutes (about 7 s of compiling each; they pass, Barlow Twins at a looser tolerance: its loss,
# about 30 here, makes large gradients, and after 4 steps a BatchNorm variance differs from eager by 0.2%).
WHOLE_STEP_METHODS = ("byol", "moco", "dino", "distillation")


@pytest.mark.slow  # about 8 s of compiling each
@pytest.mark.parametrize("name", WHOLE_STEP_METHODS)
def test_compiling_the_whole_step_makes_one_graph_that_trains_like_eager(
    name: str, cifar_folder: Path, tmp_path: Path
) -> None:
    """``compile="step"`` compiles what the engine calls, the method's forward: every network, the heads and
    the loss, with no graph break and no recompilation from one step to the next (DINO's teacher temperature
    changes every step of its warm-up, and is read as a tensor for that). It trains like eager, up to float
    rounding (inductor's fused kernels sum in another order: after 4 steps weights differ by up to 5e-4, where
    a dropped buffer update or another random draw differs by far more), and keeps the checkpoint keys."""
    eager = build(name)
    data = dataset_for(eager, cifar_folder)
    train(eager, data, config(epochs=1), tmp_path / "eager")
    compiled = build(name)
    torch._dynamo.reset()
    counters.clear()
    train(compiled, data, dataclasses.replace(config(epochs=1), compile="step"), tmp_path / "compiled")
    assert compiled._compiled_call_impl is not None
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["frames"]["ok"] == 1, dict(counters["frames"])  # one graph, never recompiled
    assert_trains_like(compiled, eager, tolerance=1e-3, label=name)


class ConstantEmbedding(SSLMethod):
    """Maps every image to the same vector: the collapse the engine must flag."""

    num_views = 1

    def __init__(self) -> None:
        super().__init__(nn.Identity(), FEATURE_DIM)
        self.vector = nn.Parameter(torch.ones(FEATURE_DIM))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        features = self.vector.expand(views[0].shape[0], -1)
        return StepOutput(loss=(features - 1).pow(2).mean(), features=features.detach())


def test_collapsed_embeddings_are_flagged(cifar_folder: Path, tmp_path: Path) -> None:
    method = ConstantEmbedding()
    data = ManifestDataset(
        cifar_folder, splits=["train"], transform=MultiView([view_transform(ViewConfig(32), Normalization())])
    )
    history = train(method, data, config(epochs=1), tmp_path)
    assert history.epochs[-1].embedding_std == 0.0 and history.epochs[-1].collapsed
    healthy = build("simclr")
    history = train(healthy, dataset_for(healthy, cifar_folder), config(epochs=1), tmp_path / "ok")
    assert not history.epochs[-1].collapsed
