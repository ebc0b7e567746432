"""The training loop on real CIFAR-10 images: checkpoints, exact resume, fingerprints, edge cases."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.data import ManifestDataset
from ssl_core.engine import CHECKPOINT_NAME, EpochStats, StepInfo, TrainConfig, TrainHistory, train
from ssl_core.methods.base import StepOutput
from ssl_core.methods.simclr import SimCLR, SimCLRConfig

FEATURE_DIM = 16
FINGERPRINT = "tiny-simclr-v1"


def make_method(seed: int = 0) -> SimCLR:
    """A SimCLR around a one-convolution backbone: fast enough for a 2-core CPU."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, FEATURE_DIM, 3, 2, 1),
        nn.BatchNorm2d(FEATURE_DIM),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SimCLR(backbone, FEATURE_DIM, SimCLRConfig(projection_hidden_dim=32, projection_dim=16))


def make_config(epochs: int, batch_size: int = 16, optimizer: str = "sgd", precision: str = "fp32") -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=0.1,
        optimizer=optimizer,
        warmup_epochs=1,
        seed=7,
        device="cpu",
        precision=precision,
        num_workers=0,
        checkpoint_interval_s=0.0,  # a checkpoint after every epoch: the resume tests crash in the second
    )


@pytest.fixture(scope="module")
def dataset(cifar_folder: Path) -> ManifestDataset:
    view = view_transform(ViewConfig(32), Normalization())
    return ManifestDataset(cifar_folder, splits=["train"], transform=MultiView([view, view]))


@pytest.fixture(scope="module")
def one_epoch_run(dataset, tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """Weights and checkpoint folder of a 1-epoch run from scratch, shared by several tests."""
    checkpoint_dir = tmp_path_factory.mktemp("one_epoch")
    method = make_method()
    train(method, dataset, make_config(epochs=1), checkpoint_dir, fingerprint=FINGERPRINT)
    return weights(method), checkpoint_dir


def weights(method: SimCLR) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class Interrupt(Exception):
    """Stands in for a crash or a killed job in the middle of an epoch."""


def test_dataset_yields_two_random_views(dataset):
    assert len(dataset) == 64 and len(dataset.class_names) == 8
    views, label = dataset[0]
    assert len(views) == 2 and all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])  # two random augmentations
    assert 0 <= label < 8


def test_training_writes_checkpoint_and_history(dataset, tmp_path):
    method = make_method()
    before = weights(method)
    steps: list[StepInfo] = []
    history = train(method, dataset, make_config(epochs=2), tmp_path / "ckpt", on_step=steps.append)
    assert not torch.equal(before["backbone.0.weight"], method.state_dict()["backbone.0.weight"])
    assert (tmp_path / "ckpt" / CHECKPOINT_NAME).is_file()
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in history.epochs)
    assert history.resumed_from_epoch == 0
    assert len(steps) == 2 * 4 and steps[-1].steps_per_epoch == 4
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    for key, value in method.checkpoint_state().items():
        assert torch.equal(state["method"][key], value), key


def test_two_identical_runs_give_identical_weights(dataset, one_epoch_run, tmp_path):
    second = make_method()
    train(second, dataset, make_config(epochs=1), tmp_path, fingerprint=FINGERPRINT)
    assert_same_weights(one_epoch_run[0], weights(second))


def crashed_then_resumed(
    data, epochs: int, checkpoint_dir: Path, optimizer: str = "sgd", precision: str = "fp32"
) -> tuple[SimCLR, TrainHistory]:
    """A run that crashes in its second epoch, then is resumed (``resume=True``) by a fresh method, as a
    new process would rebuild it from the same seed: the resumed method and its history."""

    def crash_in_second_epoch(info: StepInfo) -> None:
        if info.epoch == 1 and info.step_in_epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            make_method(),
            data,
            make_config(epochs=epochs, optimizer=optimizer, precision=precision),
            checkpoint_dir,
            fingerprint=FINGERPRINT,
            on_step=crash_in_second_epoch,
        )
    assert torch.load(checkpoint_dir / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    resumed = make_method()
    config = make_config(epochs=epochs, optimizer=optimizer, precision=precision)
    history = train(resumed, data, config, checkpoint_dir, resume=True, fingerprint=FINGERPRINT)
    assert history.resumed_from_epoch == 1
    return resumed, history


@pytest.mark.parametrize(
    ("optimizer", "precision"), [("sgd", "fp32"), ("lars", "fp32"), ("sgd", "fp16-mixed"), ("lars", "fp16-mixed")]
)
def test_resume_after_interruption_is_exact(dataset, tmp_path, optimizer, precision):
    """fp16-mixed too, whose loss scale goes on from the checkpoint's: its first step overflows at the
    initial scale and halves it, and a resumed run that started over from the initial scale could skip a
    step the uninterrupted one took."""
    uninterrupted = make_method()
    config = make_config(epochs=3, optimizer=optimizer, precision=precision)
    history_a = train(uninterrupted, dataset, config, tmp_path / "a", fingerprint=FINGERPRINT)
    resumed, history_b = crashed_then_resumed(dataset, 3, tmp_path / "b", optimizer, precision)
    assert [e.epoch for e in history_b.epochs] == [1, 2, 3]
    assert [e.loss for e in history_b.epochs] == [e.loss for e in history_a.epochs]
    assert_same_weights(weights(uninterrupted), weights(resumed))
    loss_scales = [torch.load(tmp_path / run / CHECKPOINT_NAME, weights_only=True).get("loss_scaler") for run in "ab"]
    assert loss_scales[0] == loss_scales[1]
    assert (loss_scales[0] is not None) == (precision == "fp16-mixed")


def test_resume_of_a_finished_run_trains_nothing(dataset, one_epoch_run):
    expected, checkpoint_dir = one_epoch_run
    method = make_method(seed=123)
    steps: list[StepInfo] = []
    history = train(
        method,
        dataset,
        make_config(epochs=1),
        checkpoint_dir,
        resume=True,
        fingerprint=FINGERPRINT,
        on_step=steps.append,
    )
    assert steps == [] and history.resumed_from_epoch == 1 and len(history.epochs) == 1
    assert_same_weights(expected, weights(method))  # the checkpoint's weights were loaded


def test_checkpoint_of_another_fingerprint_is_ignored(dataset, one_epoch_run, tmp_path):
    train(make_method(seed=5), dataset, make_config(epochs=1), tmp_path, fingerprint="other-run")
    fresh = make_method()
    history = train(fresh, dataset, make_config(epochs=1), tmp_path, resume=True, fingerprint=FINGERPRINT)
    assert history.resumed_from_epoch == 0
    assert [e.epoch for e in history.epochs] == [1]
    # It trained from scratch, exactly like a run that never saw the other checkpoint.
    assert_same_weights(one_epoch_run[0], weights(fresh))
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["fingerprint"] == FINGERPRINT


def test_empty_dataset_raises(dataset, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train(make_method(), Subset(dataset, []), make_config(epochs=1), tmp_path)


def test_batch_larger_than_dataset_is_reduced(dataset, tmp_path):
    steps: list[StepInfo] = []
    history = train(
        make_method(), Subset(dataset, range(10)), make_config(epochs=1, batch_size=256), tmp_path, on_step=steps.append
    )
    assert len(steps) == 1 and steps[0].steps_per_epoch == 1
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0].loss)


def checkpointed_epochs(dataset, folder: Path, interval_s: float, pause_after_epoch: int = 0) -> list[int | None]:
    """The epoch of ``last.pt`` as each epoch of a 3-epoch run ends (None: none yet); one epoch may pause 2.1 s."""
    seen: list[int | None] = []

    def look(stats: EpochStats) -> None:
        path = folder / CHECKPOINT_NAME
        seen.append(torch.load(path, weights_only=True)["epoch"] if path.exists() else None)
        if stats.epoch == pause_after_epoch:
            time.sleep(2.1)

    config = dataclasses.replace(make_config(epochs=3), checkpoint_interval_s=interval_s)
    train(make_method(), dataset, config, folder, fingerprint=FINGERPRINT, on_epoch_end=look)
    return seen


def test_a_checkpoint_waits_for_its_interval_and_the_last_epoch_always_writes_one(dataset, tmp_path):
    assert checkpointed_epochs(dataset, tmp_path / "every", interval_s=0.0) == [1, 2, 3]
    assert checkpointed_epochs(dataset, tmp_path / "hourly", interval_s=3600.0) == [None, None, 3]
    # Epoch 2 ends more than 2 s after the start (or after epoch 1's checkpoint, if epoch 1 took that long).
    assert checkpointed_epochs(dataset, tmp_path / "paused", interval_s=2.0, pause_after_epoch=1)[1:] == [2, 3]
    with pytest.raises(ValueError, match="checkpoint_interval_s must be >= 0"):
        dataclasses.replace(make_config(epochs=1), checkpoint_interval_s=-1.0)


def test_compile_takes_a_scope_and_a_mode_of_torch_compile():
    """``compile`` names what is compiled, not a bool: True would read as a scope and fail late."""
    with pytest.raises(ValueError, match=r"compile must be one of off, networks, step; got True"):
        dataclasses.replace(make_config(epochs=1), compile=True)
    with pytest.raises(ValueError, match=r"compile_mode must be None or one of default, reduce-overhead.*got 'fast'"):
        dataclasses.replace(make_config(epochs=1), compile="step", compile_mode="fast")


def with_loss_times(method: SimCLR, factor: float, inputs_times: float = 1.0) -> SimCLR:
    """``method`` whose loss is multiplied by ``factor`` and whose views by ``inputs_times``: losses and
    activations out of fp16's range, as a recipe or data could have them."""
    step = method.training_step

    def exaggerated_step(views: list[torch.Tensor]) -> StepOutput:
        output = step([v * inputs_times for v in views])
        return dataclasses.replace(output, loss=output.loss * factor)

    method.training_step = exaggerated_step
    return method


def test_fp16_gradients_that_overflow_even_unscaled_stop_training_with_the_reason(dataset, tmp_path):
    """Every step's gradients overflow fp16, so the scaler skips every step and halves its scale (65,536 -> below 1
    in 17 steps) while the loss, computed in fp32, stays finite: the run stops rather than train nothing."""
    method = with_loss_times(make_method(), 1e30)
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    config = make_config(epochs=2, batch_size=2, precision="fp16-mixed")  # 32 steps an epoch
    with pytest.raises(
        FloatingPointError, match=r"fp16-mixed: the loss scale fell to .* in epoch 1.*precision to fp32"
    ):
        train(method, dataset, config, tmp_path)
    assert_same_weights(before, {name: p.detach() for name, p in method.named_parameters()})  # no step was taken


def test_fp16_activations_that_overflow_name_fp32_as_the_way_out(dataset, tmp_path):
    """Inputs 1e6 times too large overflow fp16's forward pass (max 65,504): the loss is not finite."""
    method = with_loss_times(make_method(), 1.0, inputs_times=1e6)
    with pytest.raises(FloatingPointError, match=r"Loss became nan in epoch 1; .* or set precision to fp32"):
        train(method, dataset, make_config(epochs=1, precision="fp16-mixed"), tmp_path)
    fp32 = with_loss_times(make_method(), 1.0, inputs_times=1e6)
    assert math.isfinite(train(fp32, dataset, make_config(epochs=1), tmp_path / "fp32").epochs[0].loss)
