"""Stage 7, serve: L2-normalized embeddings over HTTP from an ONNX model.

``POST /embed`` takes one or more images as multipart ``files`` and returns
``{"embeddings": [[...], ...], "dim": D, "count": N, "model": ...}``;
``GET /health`` says whether the model is loaded. Bad input gets a 4xx with a
reason, never a 5xx: 413 for an upload over ``serve.max_upload_mb`` or more than
``serve.max_images_per_request`` images, 415 for a file that is not a decodable
image. The model comes from an ONNX file or a registry URI such as
``models:/ssl-embedder@champion`` (downloaded once at start-up). The server binds
to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from ssl_core.onnx_embedder import OnnxEmbedder
from tasks.errors import UserError
from tasks.params import ServeParams

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding


class ServeError(UserError):
    """The model to serve cannot be found; the message says what to do."""


@dataclass(frozen=True)
class ServedModel:
    """Which model to serve: an ONNX path and where it came from (file or registry URI)."""

    onnx_path: Path
    source: str


def resolve_model(source: str, cache_dir: Path) -> ServedModel:
    """An ONNX file as is, or a ``models:/`` URI downloaded from the MLflow registry."""
    if source.startswith("models:/"):
        from tasks.model_uris import download_onnx

        return ServedModel(download_onnx(source, cache_dir), source)
    path = Path(source)
    if not path.is_file():
        raise ServeError(f"No ONNX model at {source}: export one (`sslpipe export`) or pass models:/<name>@<alias>.")
    return ServedModel(path, source)


def create_app(model: ServedModel, params: ServeParams = ServeParams()) -> FastAPI:
    """The FastAPI app; the ONNX session is created once, in the lifespan."""
    max_bytes = int(params.max_upload_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.embedder = OnnxEmbedder(model.onnx_path)
        logger.info("Serving %s (%s)", model.source, model.onnx_path)
        yield

    app = FastAPI(title="SSL embedding server", version="1", lifespan=lifespan)

    @app.middleware("http")
    async def limit_upload_size(request: Request, call_next):
        # Checked before the body is read: an oversized upload never reaches memory.
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return JSONResponse(
                status_code=413,
                content={"detail": f"Upload of {int(length)} bytes exceeds the {params.max_upload_mb} MB limit."},
            )
        return await call_next(request)

    @app.get("/health")
    def health(request: Request) -> dict:
        embedder: OnnxEmbedder = request.app.state.embedder
        return {
            "status": "ok",
            "model": model.source,
            "embedding_dim": embedder.metadata.embedding_dim,
            "image_size": embedder.metadata.image_size,
        }

    @app.post("/embed")
    def embed(request: Request, files: list[UploadFile] = File(..., description="One or more image files.")) -> dict:
        # Plain def: FastAPI runs it in the thread pool, so inference never blocks the event loop.
        if len(files) > params.max_images_per_request:
            raise HTTPException(
                413, f"{len(files)} images in one request; the limit is {params.max_images_per_request}."
            )
        images = []
        total = 0
        for upload in files:
            data = upload.file.read(max_bytes + 1)
            total += len(data)
            if total > max_bytes:
                raise HTTPException(413, f"Upload exceeds the {params.max_upload_mb} MB limit.")
            images.append(decode_image(data, upload.filename or "upload"))
        embedder: OnnxEmbedder = request.app.state.embedder
        vectors = embedder.embed(images)
        return {
            "embeddings": vectors.tolist(),
            "dim": int(vectors.shape[1]),
            "count": len(images),
            "model": model.source,
        }

    return app


def decode_image(data: bytes, filename: str) -> Image.Image:
    """Fully decoded RGB image, or HTTP 415 saying why not."""
    if not data:
        raise HTTPException(415, f"{filename}: empty file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise HTTPException(413, f"{filename}: {image.width}x{image.height} pixels is too large.")
                return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(415, f"{filename}: not a recognized image format.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise HTTPException(415, f"{filename}: corrupt image ({error}).") from None


def serve(model_source: str, params: ServeParams, cache_dir: Path) -> None:
    """Runs the server in the foreground until interrupted."""
    import uvicorn

    app = create_app(resolve_model(model_source, cache_dir), params)
    uvicorn.run(app, host=params.host, port=params.port, log_level="info")
