"""Embedding images with an exported ONNX model: preprocessing included.

Needs only numpy, pillow, onnx and onnxruntime (no torch: a test imports it without),
so a serving image can skip torch. The
preprocessing reproduces the eval transform of :mod:`ssl_core.augment` from the
size and normalization stored in the ONNX metadata: resize the short side
(bilinear, as torchvision does for PIL images), center crop, scale to [0, 1],
normalize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssl_core.onnx_format import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, onnx_session, read_onnx_metadata


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


class OnnxEmbedder:
    """Loads an exported model once; :meth:`embed` returns L2-normalized vectors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        self.session = onnx_session(self.path)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed float32 -> (N, D) embeddings."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32, copy=False)})[0]

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_arrays(np.stack([preprocess(image, self.metadata) for image in images]))
