"""Static int8 quantization: int8 weights in the graph, embeddings close to fp32, metadata kept.

On real CIFAR-10 images (``cifar_folder``): the first half of them calibrates, the
other half is compared, so closeness is not measured on the calibration images.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ssl_core.augment import Normalization, eval_transform
from ssl_core.data import ManifestDataset
from ssl_core.export import export_onnx
from ssl_core.onnx_embedder import CPU_PROVIDER, OnnxEmbedder
from ssl_core.onnx_format import OnnxMetadata, read_onnx_metadata
from ssl_core.quantize import QUANTIZATION_KEY, ImageBatches, quantize_int8, quantized_ops, throughput
from tests.ssl_core.tiny import small_convnet

pytest.importorskip("onnxruntime")

NORM = Normalization()
WIDTH = 16
METADATA = OnnxMetadata(32, NORM.mean, NORM.std, 8 * WIDTH, "small_convnet", "simclr")
NUM_CONVS = 4  # small_convnet's conv-BN-ReLU blocks; BN folds into the conv on export
# Measured on held-out images: int8 vs fp32 cosine >= 0.9999 for each (mean 0.99996); calibrated on images
# scaled by 0.01, 0.92 at worst. Closeness must be judged near 1: this random network maps two different
# images to embeddings whose cosine is 0.91 on average.
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def images(cifar_folder: Path) -> np.ndarray:
    """(64, 3, 32, 32) preprocessed real images, as the export stage feeds them."""
    dataset = ManifestDataset(cifar_folder, transform=eval_transform(32, NORM))
    return np.stack([dataset[i][0].numpy() for i in range(len(dataset))])


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    backbone = small_convnet(WIDTH).eval()
    return export_onnx(backbone, METADATA, tmp_path_factory.mktemp("fp32") / "model.onnx", opset=18)


@pytest.fixture(scope="module")
def int8_path(fp32_path: Path, images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_int8(fp32_path, tmp_path_factory.mktemp("int8") / "model.onnx", images[::2])


def cosines(a_path: Path, b_path: Path, images: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of the two models' unit-length embeddings of each image."""
    a = OnnxEmbedder(a_path, intra_op_threads=1, providers=[CPU_PROVIDER]).embed_arrays(images)
    b = OnnxEmbedder(b_path, intra_op_threads=1, providers=[CPU_PROVIDER]).embed_arrays(images)
    return (a * b).sum(axis=1)


def test_every_conv_runs_on_int8_weights(int8_path: Path) -> None:
    graph = onnx.load(str(int8_path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert quantized_ops(int8_path) == {"Conv": NUM_CONVS}
    # Per-channel: one int8 weight tensor per conv, with a scale per output channel.
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == NUM_CONVS


def test_the_fp32_graph_has_no_int8(fp32_path: Path) -> None:
    assert quantized_ops(fp32_path) == {}


def test_int8_embeddings_are_close_to_fp32_on_held_out_images(fp32_path: Path, int8_path: Path, images) -> None:
    similarity = cosines(fp32_path, int8_path, images[1::2])  # not the calibration images
    assert similarity.min() > MIN_COSINE, similarity
    int8 = OnnxEmbedder(int8_path, intra_op_threads=1, providers=[CPU_PROVIDER]).embed_arrays(images[:3])
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)  # still L2-normalized


def test_a_wrong_calibration_really_hurts(fp32_path: Path, images, tmp_path: Path) -> None:
    """Calibrated on near-black images, real ones saturate the ranges: the closeness check above can fail."""
    dim = quantize_int8(fp32_path, tmp_path / "dim.onnx", images[::2] * 0.01)
    assert cosines(fp32_path, dim, images[1::2]).min() < MIN_COSINE


def test_metadata_survives_and_says_int8(fp32_path: Path, int8_path: Path) -> None:
    assert read_onnx_metadata(int8_path) == read_onnx_metadata(fp32_path) == METADATA
    props = {p.key: p.value for p in onnx.load(str(int8_path)).metadata_props}
    assert "int8" in props[QUANTIZATION_KEY] and "minmax calibration on 32 images" in props[QUANTIZATION_KEY]
    assert QUANTIZATION_KEY not in {p.key for p in onnx.load(str(fp32_path)).metadata_props}


def test_dynamic_batch_axis_survives(int8_path: Path, images) -> None:
    embedder = OnnxEmbedder(int8_path, intra_op_threads=1, providers=[CPU_PROVIDER])
    for size in (1, 5):
        assert embedder.embed_arrays(images[:size]).shape == (size, 8 * WIDTH)


@pytest.mark.parametrize(
    ("method", "count", "same_path", "message"),
    [
        ("kl", 4, False, "minmax, percentile, entropy"),
        ("minmax", 0, False, "at least one"),
        ("minmax", 4, True, "overwrite"),
    ],
)
def test_bad_arguments_raise(fp32_path: Path, images, tmp_path: Path, method, count, same_path, message) -> None:
    out = fp32_path if same_path else tmp_path / "model.onnx"
    with pytest.raises(ValueError, match=message):
        quantize_int8(fp32_path, out, images[:count], method)


def test_image_batches_yields_every_image_once_then_none(images) -> None:
    reader = ImageBatches(images[:10], batch_size=4)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["images"]))
        assert batch["images"].dtype == np.float32
    assert sizes == [4, 4, 2]


def test_throughput_ranks_a_slower_model_below() -> None:
    batch = np.zeros((8, 3, 4, 4), dtype=np.float32)

    def slow(x: np.ndarray) -> np.ndarray:
        time.sleep(0.004)
        return x

    speed = throughput({"fast": lambda x: x, "slow": slow}, batch, rounds=2, runs_per_round=2)
    assert speed["slow"] < speed["fast"]
    assert 8 / 0.004 / 2 < speed["slow"] <= 8 / 0.004  # about 2,000 images/s, never faster
