"""The device-side training data (ssl_core.device_data) on real CIFAR-10 images.

Decoding must give PIL's pixels (resized and center-cropped like the eval transform);
an epoch of ``batches`` must be a drop-last permutation drawn from the generator
alone; the engine on :class:`DeviceImages` must train, checkpoint and resume
bit-exactly like on the DataLoader path; ``embed_uint8_images`` must agree with
``compute_embeddings``. The CUDA branches (placement, pinned host memory) run only
where a GPU is present.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from ssl_core import batch_augment, device_data
from ssl_core.augment import Normalization, ViewConfig, eval_transform
from ssl_core.batch_augment import BatchViews
from ssl_core.data import ManifestDataset
from ssl_core.device_data import DeviceImages, fits_on_device
from ssl_core.embed import compute_embeddings, embed_uint8_images
from ssl_core.engine import CHECKPOINT_NAME, StepInfo, train
from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, sha256_file, write_manifest
from tests.ssl_core.test_engine import (
    FINGERPRINT,
    assert_same_weights,
    crashed_then_resumed,
    make_config,
    make_method,
    weights,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the whole module, module-scoped runs included (see ``single_thread``).

    Module-wide, not per test: float sums split over another thread count round
    differently, so a shared run and its repeat must see the same count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_set(cifar_folder: Path) -> ManifestDataset:
    """The 64 train images of the tiny CIFAR folder, untransformed (PIL images)."""
    return ManifestDataset(cifar_folder, ["train"])


@pytest.fixture(scope="module")
def decoded(train_set: ManifestDataset) -> DeviceImages:
    """The train images decoded once at 32 px on the CPU, without views."""
    return DeviceImages.decode(train_set, 32, CPU)


def simclr_views() -> BatchViews:
    """The tiny SimCLR's two 32 px views, rendered on the batch's device."""
    return make_method().batch_transform(ViewConfig(32), Normalization())


def with_views(images: DeviceImages, views: BatchViews | None) -> DeviceImages:
    """The same decoded tensors with other views (the shared fixture stays untouched)."""
    return DeviceImages(images.images, images.labels, views)


def pil_pixels(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 pixels of an image file as PIL decodes it."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def identity_views(images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Views that are the uint8 batch itself: shows which stored images a batch holds."""
    return [images]


def indexed_images(count: int) -> DeviceImages:
    """``count`` 4 px images whose every pixel is the image's index, rendered as themselves."""
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 4, 4).clone()
    return DeviceImages(images, torch.arange(count), identity_views)


def epoch_indices(images: DeviceImages, batch_size: int, seed: int) -> list[list[int]]:
    """The image indices of every batch of one epoch of ``indexed_images``."""
    generator = torch.Generator().manual_seed(seed)
    return [batch[0][:, 0, 0, 0].tolist() for batch in images.batches(batch_size, generator, CPU)]


def one_epoch_views(images: DeviceImages, batch_size: int, seed: int) -> list[list[torch.Tensor]]:
    """Every batch of views of one epoch drawn from a CPU generator seeded with ``seed``."""
    return list(images.batches(batch_size, torch.Generator().manual_seed(seed), CPU))


# --- decoding -----------------------------------------------------------------------------


def test_decode_gives_pil_pixels_and_labels(train_set: ManifestDataset, decoded: DeviceImages) -> None:
    """At the images' own 32 px, decoding is lossless: every stored pixel is PIL's, labels are the dataset's."""
    assert decoded.images.shape == (64, 3, 32, 32) and decoded.images.dtype == torch.uint8
    assert decoded.images.device == CPU and len(decoded) == 64
    expected = torch.stack([pil_pixels(train_set.root / record.path) for record in train_set.records])
    assert torch.equal(decoded.images, expected)
    assert decoded.labels.dtype == torch.int64
    assert decoded.labels.tolist() == train_set.labels
    assert len(set(train_set.labels)) == 8  # all classes present, so a label shuffle would show


def test_decode_at_16_px_resizes_like_the_eval_transform(train_set: ManifestDataset) -> None:
    """At 16 px each image is T.Resize(16) + T.CenterCrop(16) of the PIL image (within one level)."""
    small = DeviceImages.decode(train_set, 16, CPU)
    assert small.images.shape == (64, 3, 16, 16) and small.images.dtype == torch.uint8
    resize = T.Compose([T.Resize(16, antialias=True), T.CenterCrop(16), T.PILToTensor()])
    expected = torch.stack([resize(train_set.load_image(i)) for i in range(len(train_set))])
    difference = (small.images.int() - expected.int()).abs()
    assert difference.max() <= 1
    # Not a plain subsampling of the 32 px pixels: it is an antialiased resize.
    assert not torch.equal(small.images, DeviceImages.decode(train_set, 32, CPU).images[:, :, ::2, ::2])


def write_folder(root: Path, images: dict[str, Image.Image]) -> Path:
    """An ingested-style folder (PNG files + manifest) holding ``images`` in split ``train``, label ``x``."""
    records = []
    for name, image in images.items():
        relative = f"train/x/{name}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative)
        records.append(ManifestRecord(relative, sha256_file(root / relative), "x", "train", *image.size))
    write_manifest(records, root / MANIFEST_NAME)
    return root


def test_non_square_images_are_center_cropped(train_set: ManifestDataset, tmp_path: Path) -> None:
    """A wide image keeps its central square: [A | B] (64x32) at 32 px is A's right half then B's left half;
    at 16 px, wide and tall images both match T.Resize + T.CenterCrop."""
    a, b = train_set.load_image(0), train_set.load_image(9)
    wide = Image.fromarray(np.concatenate([np.asarray(a), np.asarray(b)], axis=1))  # 64 wide, 32 high
    tall = a.crop((6, 0, 26, 32))  # 20 wide, 32 high
    folder = ManifestDataset(write_folder(tmp_path, {"0_wide": wide, "1_tall": tall}), ["train"])

    at_32 = DeviceImages.decode(folder, 32, CPU).images
    pixels_a, pixels_b = T.PILToTensor()(a), T.PILToTensor()(b)
    assert torch.equal(at_32[0], torch.cat([pixels_a[:, :, 16:], pixels_b[:, :, :16]], dim=2))

    at_16 = DeviceImages.decode(folder, 16, CPU).images
    assert at_16.shape == (2, 3, 16, 16)
    resize = T.Compose([T.Resize(16, antialias=True), T.CenterCrop(16), T.PILToTensor()])
    expected = torch.stack([resize(wide), resize(tall)])
    assert (at_16.int() - expected.int()).abs().max() <= 1


# --- batches ------------------------------------------------------------------------------


def test_an_epoch_uses_each_image_at_most_once() -> None:
    """len // batch_size batches of distinct images: a drop-last permutation, not sampling with replacement."""
    images = indexed_images(64)
    batches = epoch_indices(images, 10, seed=3)
    assert [len(b) for b in batches] == [10] * 6
    used = [i for batch in batches for i in batch]
    assert len(set(used)) == len(used) == 60
    assert set(used) <= set(range(64))
    assert used != sorted(used)  # shuffled
    # One batch of everything when the batch is the whole set.
    assert sorted(epoch_indices(images, 64, seed=3)[0]) == list(range(64))
    assert epoch_indices(images, 65, seed=3) == []


def test_order_comes_from_the_generator_alone() -> None:
    """Same seed, same order, whatever the global RNG does; another seed, another order."""
    images = indexed_images(64)
    first = epoch_indices(images, 16, seed=11)
    torch.manual_seed(12345)
    torch.rand(100)
    assert epoch_indices(images, 16, seed=11) == first
    assert epoch_indices(images, 16, seed=12) != first


def test_batches_are_views_of_the_right_shape(decoded: DeviceImages) -> None:
    """With the method's BatchViews, each batch is num_views normalized float (B, 3, 32, 32) views."""
    images = with_views(decoded, simclr_views())
    batches = one_epoch_views(images, 16, seed=0)
    assert len(batches) == 4
    for views in batches:
        assert len(views) == make_method().num_views == 2
        for view in views:
            assert view.shape == (16, 3, 32, 32) and view.dtype == torch.float32 and view.device == CPU
            assert torch.isfinite(view).all()
            assert view.min() < 0 < view.max()  # normalized, not [0, 1] or [0, 255]
        assert not torch.equal(views[0], views[1])  # two random views, not one twice


def test_same_seed_gives_the_same_views_and_another_seed_other_views(decoded: DeviceImages) -> None:
    """An epoch of rendered views repeats exactly from the generator's seed, and only from it."""
    images = with_views(decoded, simclr_views())
    first = one_epoch_views(images, 16, seed=5)
    torch.manual_seed(999)  # the global RNG must play no part
    again = one_epoch_views(images, 16, seed=5)
    other = one_epoch_views(images, 16, seed=6)
    for a, b in zip(first, again, strict=True):
        for view_a, view_b in zip(a, b, strict=True):
            assert torch.equal(view_a, view_b)
    assert not torch.equal(first[0][0], other[0][0])


def test_batches_without_views_raise(decoded: DeviceImages) -> None:
    """A DeviceImages nobody gave views to fails with a message that says what to set."""
    images = with_views(decoded, None)
    with pytest.raises(ValueError, match="views"):
        next(images.batches(16, torch.Generator().manual_seed(0), CPU))


# --- the engine on the device path ----------------------------------------------------------


@pytest.fixture(scope="module")
def device_set(decoded: DeviceImages) -> DeviceImages:
    """The decoded train images with the tiny SimCLR's views: what the engine's fast path trains on."""
    return with_views(decoded, simclr_views())


@pytest.fixture(scope="module")
def two_epoch_run(device_set: DeviceImages, tmp_path_factory: pytest.TempPathFactory):
    """Weights, history and checkpoint folder of an uninterrupted 2-epoch device-path run."""
    checkpoint_dir = tmp_path_factory.mktemp("device_two_epochs")
    method = make_method()
    before = weights(method)
    steps: list[StepInfo] = []
    history = train(
        method, device_set, make_config(epochs=2), checkpoint_dir, fingerprint=FINGERPRINT, on_step=steps.append
    )
    return before, weights(method), history, checkpoint_dir, steps


def test_device_path_trains_and_checkpoints(two_epoch_run) -> None:
    """Two epochs of 64 // 16 steps: weights move, losses are finite, last.pt holds epoch 2 and the final weights."""
    before, after, history, checkpoint_dir, steps = two_epoch_run
    assert not torch.equal(before["backbone.0.weight"], after["backbone.0.weight"])
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in history.epochs)
    assert not any(e.collapsed for e in history.epochs)
    assert len(steps) == 8 and steps[-1].steps_per_epoch == 4
    assert all(math.isfinite(s.loss) for s in steps)
    state = torch.load(checkpoint_dir / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2 and state["fingerprint"] == FINGERPRINT
    for key, value in after.items():
        assert torch.equal(state["method"][key], value), key


def test_device_path_two_identical_runs_give_identical_weights(
    two_epoch_run, device_set: DeviceImages, tmp_path: Path
) -> None:
    """Seeded from (seed, epoch), a second run reproduces the first bit for bit."""
    second = make_method()
    torch.manual_seed(4242)  # the engine reseeds each epoch; the global state before it must not matter
    train(second, device_set, make_config(epochs=2), tmp_path / "again", fingerprint=FINGERPRINT)
    assert_same_weights(two_epoch_run[1], weights(second))


def test_device_path_resume_after_interruption_is_exact(
    two_epoch_run, device_set: DeviceImages, tmp_path: Path
) -> None:
    """Crashed in epoch 2 and resumed from epoch 1's checkpoint: the uninterrupted run's weights and losses."""
    _, expected, history_a, _, _ = two_epoch_run
    resumed, history_b = crashed_then_resumed(device_set, 2, tmp_path / "b")
    assert [e.epoch for e in history_b.epochs] == [1, 2]
    assert [e.loss for e in history_b.epochs] == [e.loss for e in history_a.epochs]
    assert_same_weights(expected, weights(resumed))


def test_device_path_other_seed_trains_differently(two_epoch_run, device_set: DeviceImages, tmp_path: Path) -> None:
    """The views and order depend on the config's seed: the bit-exact repeats above are not trivially equal."""
    other = make_method()
    config = dataclasses.replace(make_config(epochs=2), seed=8)
    train(other, device_set, config, tmp_path, fingerprint=FINGERPRINT)
    assert not torch.equal(two_epoch_run[1]["backbone.0.weight"], other.state_dict()["backbone.0.weight"])


def test_a_compiled_run_trains_like_the_eager_one_with_the_same_checkpoints(
    two_epoch_run, decoded: DeviceImages, tmp_path: Path
) -> None:
    """``compile`` (on by default for one CUDA process) compiles the backbone and the views in place.

    The state dict keeps its keys, so checkpoints resume across compiled and eager runs, and the
    training is the eager run's up to float rounding: the same draws, the same order.
    """
    _, eager_weights, eager_history, eager_dir, _ = two_epoch_run
    compiled_set = with_views(decoded, simclr_views())  # compiling replaces its rendering: not the shared views
    method = make_method()
    config = dataclasses.replace(make_config(epochs=2), compile="networks")
    history = train(method, compiled_set, config, tmp_path, fingerprint=FINGERPRINT)
    assert compiled_set.views._render is not batch_augment.normalized_view
    compiled_keys = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["method"].keys()
    assert compiled_keys == torch.load(eager_dir / CHECKPOINT_NAME, weights_only=True)["method"].keys()
    assert [e.loss for e in history.epochs] == pytest.approx([e.loss for e in eager_history.epochs], rel=1e-3)
    compiled_weights = weights(method)
    for key, value in eager_weights.items():
        torch.testing.assert_close(compiled_weights[key], value, atol=1e-3, rtol=1e-3, msg=key)


# --- embedding -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    """The tiny backbone with BatchNorm running statistics off their defaults, in eval mode."""
    model = make_method(seed=2).backbone
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 0.5 + 0.3)
    return model.eval()


def test_embed_uint8_images_matches_compute_embeddings(
    backbone: nn.Module, decoded: DeviceImages, cifar_folder: Path
) -> None:
    """Normalizing uint8 on the device equals ToTensor + Normalize on PIL images, through the model, in 1e-5."""
    normalization = Normalization()
    reference, labels = compute_embeddings(
        backbone, ManifestDataset(cifar_folder, ["train"], eval_transform(32, normalization)), batch_size=16
    )
    ours = embed_uint8_images(backbone, decoded.images, normalization, CPU, "fp32", batch_size=10)  # a partial chunk
    assert ours.shape == reference.shape == (64, 16) and ours.dtype == torch.float32 and ours.device == CPU
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert torch.equal(labels, decoded.labels)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(64))
    assert len({tuple(row.tolist()) for row in ours.round(decimals=4)}) == 64  # not one constant embedding


def test_embed_uint8_images_keeps_the_model_mode(backbone: nn.Module, decoded: DeviceImages) -> None:
    """A model in train mode is embedded in eval mode (running BN statistics) and handed back in train mode."""
    normalization = Normalization()
    in_eval = embed_uint8_images(backbone.eval(), decoded.images, normalization, CPU)
    assert not backbone.training
    running_mean = backbone[1].running_mean.clone()
    try:
        backbone.train()
        in_train = embed_uint8_images(backbone, decoded.images, normalization, CPU)
        assert backbone.training and all(m.training for m in backbone.modules())
        assert torch.equal(backbone[1].running_mean, running_mean)  # no batch statistics were used or updated
        assert torch.equal(in_train, in_eval)
    finally:
        backbone.eval()


# --- placement -------------------------------------------------------------------------------


def test_place_on_cpu_keeps_the_images_on_cpu(decoded: DeviceImages) -> None:
    """On a CPU the images always fit, stay put (unpinned) and ``place`` returns the same object."""
    images = with_views(decoded, None)
    assert images.place(CPU) is images
    assert images.images.device == CPU and torch.equal(images.images, decoded.images)
    assert fits_on_device(images.images.numel(), CPU)
    assert fits_on_device(10**15, CPU)


@pytest.mark.cuda
def test_place_on_cuda_and_batches_there(decoded: DeviceImages) -> None:
    """Small images move to the GPU; an epoch there is rendered on the GPU and repeats from its seed."""
    cuda = torch.device("cuda")
    images = with_views(decoded, simclr_views()).place(cuda)
    assert images.images.device.type == "cuda"
    assert not fits_on_device(10**15, cuda)
    batches = list(images.batches(16, torch.Generator(device=cuda).manual_seed(1), cuda))
    again = list(images.batches(16, torch.Generator(device=cuda).manual_seed(1), cuda))
    assert len(batches) == 4
    for views, views_again in zip(batches, again, strict=True):
        assert len(views) == 2
        for view, view_again in zip(views, views_again, strict=True):
            assert view.device.type == "cuda" and view.shape == (16, 3, 32, 32)
            assert torch.equal(view, view_again)


@pytest.mark.cuda
def test_pinned_host_images_give_the_same_epoch_as_gpu_images(
    decoded: DeviceImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images too big for the GPU stay pinned on the host; their epoch (order and views) equals the on-GPU one."""
    cuda = torch.device("cuda")
    on_gpu = with_views(decoded, simclr_views()).place(cuda)
    monkeypatch.setattr(device_data, "fits_on_device", lambda num_bytes, device: False)
    on_host = with_views(decoded, simclr_views()).place(cuda)
    assert on_host.images.device == CPU and on_host.images.is_pinned()

    def epoch(images: DeviceImages) -> Iterator[list[torch.Tensor]]:
        return images.batches(16, torch.Generator(device=cuda).manual_seed(3), cuda)

    for from_gpu, from_host in zip(epoch(on_gpu), epoch(on_host), strict=True):
        for view_gpu, view_host in zip(from_gpu, from_host, strict=True):
            assert view_host.device.type == "cuda"
            assert torch.equal(view_gpu, view_host)
