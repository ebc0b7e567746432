"""``curate.embedder``: which embeddings curation compares images with, resolved before any work."""

from __future__ import annotations

import pickle
from pathlib import Path

from ssl_core.curation.embedders import PIXEL_EMBEDDER
from ssl_core.model_file import load_embedding_model
from tasks.errors import UserError
from tasks.layout import MODEL_FILE
from tasks.model_uris import MODELS_PREFIX, download_checkpoint


class EmbedderError(UserError):
    """``curate.embedder`` names nothing usable; the message says what to set."""


CHOICES = f"'{PIXEL_EMBEDDER}', a model.pt path, or '{MODELS_PREFIX}<name>@<alias>'"


def resolve_embedder(spec: str, download_dir: Path) -> Path | None:
    """The model file behind ``spec``, or None for the pixel embedder.

    A registry alias (``models:/ssl-embedder@champion``) is downloaded into
    ``download_dir``; a missing alias fails here, with the registry's answer.
    """
    if spec == PIXEL_EMBEDDER:
        return None
    if spec.startswith(MODELS_PREFIX):
        return download_checkpoint(spec, download_dir / MODEL_FILE)
    path = Path(spec)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    if not path.is_file():
        raise EmbedderError(f"curate.embedder = {spec!r}: no such model file. Use {CHOICES}.")
    try:
        load_embedding_model(path)
    except (ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        raise EmbedderError(
            f"curate.embedder = {spec!r} is not an embedding model file ({error}). Use {CHOICES}."
        ) from None
    return path
