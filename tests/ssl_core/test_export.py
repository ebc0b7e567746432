"""ONNX export: numerical agreement with PyTorch, metadata, and the torch-free embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_core.augment import Normalization, eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.export import export_onnx, max_abs_difference
from ssl_core.onnx_embedder import OnnxEmbedder, preprocess
from ssl_core.onnx_format import OnnxMetadata, read_onnx_metadata

pytest.importorskip("onnxruntime")

IMAGE_SIZE = 32
NORM = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
METADATA = OnnxMetadata(IMAGE_SIZE, NORM.mean, NORM.std, 512, "resnet18_cifar", "simclr")


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18_cifar").module.eval()


@pytest.fixture(scope="module")
def onnx_path(backbone, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(backbone, METADATA, path, opset=18)
    return path


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_export_writes_one_self_contained_file(onnx_path):
    assert onnx_path.is_file()
    assert not onnx_path.with_name(onnx_path.name + ".data").exists()


def test_onnx_matches_pytorch_on_another_batch_size(onnx_path, backbone):
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    assert max_abs_difference(onnx_path, backbone, images) < 1e-4


def test_metadata_round_trips(onnx_path):
    assert read_onnx_metadata(onnx_path) == METADATA


def test_metadata_missing_keys_raise():
    with pytest.raises(ValueError, match="image_size"):
        OnnxMetadata.from_props({"embedding_dim": "3"})


@pytest.mark.parametrize("size", [(50, 37), (37, 50), (32, 32), (64, 64), (20, 24)])
def test_preprocess_matches_torchvision_eval_transform(size):
    image = random_image(*size)
    expected = eval_transform(IMAGE_SIZE, NORM)(image).numpy()
    actual = preprocess(image, METADATA)
    assert actual.shape == expected.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_preprocess_matches_on_a_real_cifar_image(cifar_image):
    expected = eval_transform(IMAGE_SIZE, NORM)(cifar_image).numpy()
    np.testing.assert_allclose(preprocess(cifar_image, METADATA), expected, atol=1e-5, rtol=0)


def test_preprocess_converts_grayscale_to_rgb():
    image = random_image(40, 40).convert("L")
    expected = eval_transform(IMAGE_SIZE, NORM)(image.convert("RGB")).numpy()
    np.testing.assert_allclose(preprocess(image, METADATA), expected, atol=1e-5, rtol=0)


def test_embedder_returns_unit_rows_equal_to_pytorch(onnx_path, backbone):
    embedder = OnnxEmbedder(onnx_path)
    assert embedder.metadata == METADATA
    images = [random_image(50, 37, seed=1), random_image(32, 32, seed=2), random_image(37, 50, seed=3)]
    embeddings = embedder.embed(images)
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        batch = torch.stack([eval_transform(IMAGE_SIZE, NORM)(image) for image in images])
        expected = torch.nn.functional.normalize(backbone(batch), dim=1).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-4)
