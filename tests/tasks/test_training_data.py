"""The pretrain stage picks its data path by device: PIL views on a CPU, decoded images and
batched views (``DeviceImages``) on a GPU, with no setting of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

from ssl_core import device_data, precision
from ssl_core.augment import MultiView
from ssl_core.data import ManifestDataset
from ssl_core.device_data import DeviceImages, fast_path_applies
from ssl_core.engine import TrainConfig
from tasks import pretrain
from tasks.params import parse_params
from tests.datasets import random_ingested_folder

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 12 random 40x36 images in a manifest: non-square, so the decoded copy is cropped."""
    return random_ingested_folder(tmp_path_factory.mktemp("ingested"), NUM_IMAGES, width=40, height=36)


class Captured(Exception):
    """Raised by the stand-in engine with what pretrain handed it."""


def handed_to_the_engine(
    method: str, ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object
) -> tuple[object, TrainConfig]:
    """The training data and the settings that ``pretrain.run`` hands the engine."""

    def capture(method, data, config, *args, **kwargs):
        raise Captured(data, config)

    monkeypatch.setattr(pretrain, "train", capture)
    section = {"method": method, "backbone": "resnet18_cifar", "batch_size": 4, "device": "cpu", **settings}
    params = parse_params({"pretrain": section})
    with pytest.raises(Captured) as captured:
        pretrain.run(params.pretrain, params.data, ingested, tmp_path / "out", tmp_path / "ckpt")
    return captured.value.args


def data_handed_to_the_engine(method: str, ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return handed_to_the_engine(method, ingested, tmp_path, monkeypatch)[0]


def test_a_cpu_trains_on_pil_views(ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_handed_to_the_engine("simclr", ingested, tmp_path, monkeypatch)
    assert isinstance(data, ManifestDataset)
    assert isinstance(data.transform, MultiView)
    views, _label = data[0]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32), (3, 32, 32)]


@pytest.mark.parametrize(("method", "sizes"), [("simclr", [32, 32]), ("dino", [32, 32] + [16] * 6)])
def test_the_fast_path_decodes_once_and_renders_the_methods_views(
    method: str, sizes: list[int], ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a GPU: the decision is the only thing that differs there.
    monkeypatch.setattr(pretrain, "fast_path_applies", lambda *args: True)
    data = data_handed_to_the_engine(method, ingested, tmp_path, monkeypatch)
    assert isinstance(data, DeviceImages)
    assert data.images.shape == (NUM_IMAGES, 3, 32, 32) and data.images.dtype == torch.uint8
    # Short side 36 -> 32, then the central 32 x 32: the eval transform's square.
    square = T.Compose([T.Resize(32), T.CenterCrop(32), T.PILToTensor()])
    assert torch.equal(data.images[0], square(ManifestDataset(ingested, ["train"]).load_image(0)))
    generator = torch.Generator().manual_seed(0)
    batch = next(data.batches(4, generator, torch.device("cpu")))
    assert [v.shape[-1] for v in batch] == sizes
    assert all(v.shape[:2] == (4, 3) for v in batch)


def test_fast_path_only_on_a_gpu_and_only_when_the_images_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")  # a device object only: nothing here touches a GPU
    assert not fast_path_applies(1000, 32, torch.device("cpu"))
    assert fast_path_applies(50_000, 32, cuda)
    monkeypatch.setattr(device_data, "host_memory_bytes", lambda: 8 * 2**30)
    assert fast_path_applies(50_000, 32, cuda)  # CIFAR-10: 154 MB
    assert not fast_path_applies(1_281_167, 224, cuda)  # ImageNet at 224 px: 193 GB


@pytest.mark.parametrize(("bf16_native", "expected"), [(True, "bf16-mixed"), (False, "fp32")])
def test_precision_auto_trains_in_bf16_only_where_the_cpu_computes_it_natively(
    bf16_native: bool, expected: str, ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default: bf16 on a CPU with AVX512-BF16 or AMX, fp32 where bf16 would be emulated (14x slower with
    AVX2 alone, benchmarks/results/cpu-precision-isa); an explicit setting is kept."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: bf16_native)
    _data, config = handed_to_the_engine("simclr", ingested, tmp_path, monkeypatch)
    assert config.precision == expected
    _data, config = handed_to_the_engine("simclr", ingested, tmp_path, monkeypatch, precision="fp32")
    assert config.precision == "fp32"
