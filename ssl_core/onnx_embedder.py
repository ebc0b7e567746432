"""Embedding images with an exported ONNX model: preprocessing included.

Needs only numpy, pillow, onnx and onnxruntime (no torch: a test imports it without),
so a serving image can skip torch. The
preprocessing reproduces the eval transform of :mod:`ssl_core.augment` from the
size and normalization stored in the ONNX metadata: resize the short side
(bilinear, as torchvision does for PIL images), center crop, scale to [0, 1],
normalize.

Runs on CUDA when onnxruntime has the CUDA execution provider (the
``onnxruntime-gpu`` package), else on the CPU::

    embedder = OnnxEmbedder(Path("models/onnx/model.onnx"), intra_op_threads=1)
    vectors = embedder.embed([Image.open("cat.jpg")])  # (1, D), unit length
    embedder.provider  # "CUDAExecutionProvider" or "CPUExecutionProvider"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_core.onnx_format import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, read_onnx_metadata

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def preprocess(image: Image.Image, metadata: OnnxMetadata) -> np.ndarray:
    """RGB PIL image -> (3, S, S) float32 array, S = metadata.image_size."""
    size = metadata.image_size
    image = image.convert("RGB")
    width, height = image.size
    # Same rounding as torchvision's Resize(int): the long side is truncated.
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    if (width, height) != new_size:
        image = image.resize(new_size, Image.BILINEAR)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    pixels = (pixels - np.array(metadata.mean, dtype=np.float32)) / np.array(metadata.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def execution_providers() -> list[str]:
    """CUDA then CPU when onnxruntime offers CUDA, else CPU alone."""
    import onnxruntime as ort

    # CPU stays listed after CUDA: onnxruntime places there what CUDA cannot run.
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in ort.get_available_providers() else [CPU_PROVIDER]


class OnnxEmbedder:
    """Loads an exported model once; :meth:`embed` returns L2-normalized vectors.

    Args:
        path: the ``model.onnx`` written by :func:`ssl_core.export.export_onnx`.
        intra_op_threads: threads one inference may use; None leaves onnxruntime's
            default (one per physical core). Set it to the cores the process is
            pinned to (``taskset``), or a run spreads over cores it may not use.
        providers: onnxruntime execution providers in order of preference; None
            picks :func:`execution_providers` (CUDA when available).

    Raises:
        ValueError: ``intra_op_threads`` below 1, or the model lacks the export's metadata.
    """

    def __init__(self, path: Path, intra_op_threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads = {intra_op_threads}: must be >= 1, or None for onnxruntime's default")
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(self.path), options, providers=list(providers) if providers is not None else execution_providers()
        )

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (onnxruntime falls back to CPU if CUDA fails to load)."""
        return self.session.get_providers()[0]

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed float32 -> (N, D) embeddings."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32, copy=False)})[0]

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_arrays(np.stack([preprocess(image, self.metadata) for image in images]))
