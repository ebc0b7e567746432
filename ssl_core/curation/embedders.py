"""What curation compares images with: a pixel thumbnail, or a trained embedding model.

- ``pixels`` (the offline fallback, no model needed): the image shrunk to 32x32 by
  area averaging, blurred (Gaussian, sigma 1 px), shrunk to 8x8, each colour
  channel centred on its mean, the whole vector L2-normalized. Shrinking and blur
  remove JPEG noise, light blur, resizing and most of a few pixels' shift; centring
  and normalizing remove brightness and contrast changes. It is the "tiny image"
  descriptor of Torralba et al. 2008 ("80 million tiny images"), coarser, because it
  only proposes neighbours: :mod:`ssl_core.curation.alignment` decides which are
  near duplicates. It does not see through large crops, flips or other views of
  the same scene: those need a model.
- a model file (``model.pt`` of the pretrain stage, or a registry version
  downloaded by the curate stage): its L2-normalized backbone embeddings.

``benchmarks/curation_recall.py`` measures each one's near-duplicate recall and
precision; docs/curation.md gives the numbers behind the default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from ssl_core.augment import eval_transform
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.model_file import load_embedding_model

PIXEL_EMBEDDER = "pixels"
PIXEL_SIDE = 8


def pixel_embedding(image: Image.Image) -> np.ndarray:
    """(3 * 8 * 8,) float32 unit vector of an RGB image (see the module docstring)."""
    thumbnail = image.resize((32, 32), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(1.0))
    small = np.asarray(thumbnail.resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX), dtype=np.float32)
    centred = (small - small.mean(axis=(0, 1))).ravel()
    norm = float(np.linalg.norm(centred))
    # A uniform image has no pattern to compare: its vector is zero, similar to nothing.
    return centred / norm if norm > 1e-3 else np.zeros_like(centred)


def model_embeddings(
    model_file: Path,
    root: Path,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, D) float32 L2-normalized embeddings of every image of ``root``'s manifest, in manifest order.

    Images are fed as the model was evaluated: resized to its image size and
    normalized with its statistics (both stored in the model file).
    """
    backbone, info = load_embedding_model(model_file)
    dataset = ManifestDataset(root, transform=eval_transform(info.image_size, info.normalization))
    backbone.to(torch.device(device))
    embeddings, _ = compute_embeddings(backbone, dataset, batch_size, num_workers, device, precision, on_batch)
    return embeddings.numpy()
