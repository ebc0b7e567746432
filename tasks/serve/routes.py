"""The HTTP routes: ``POST /embed``, and health, info and metrics for operators.

Status codes a client may see from ``/embed``: 200; 400/413/415/422 for bad input
(:mod:`tasks.serve.inputs`, each with a reason in ``detail``); 429 with
``Retry-After`` when ``serve.max_queued_requests`` requests wait already; 503 with
``Retry-After`` when a request is not answered within ``serve.request_timeout_s``.
503, not 504: the server itself is busy, nothing upstream timed out, and clients
and proxies retry a 503 (as they do a 429) after ``Retry-After``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tasks.serve.inputs import read_images
from tasks.serve.runtime import ServerState

# A 2x2 red PNG, for the documented examples.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="
)

embed_router = APIRouter(tags=["embeddings"])
ops_router = APIRouter(tags=["operations"])


class EmbedResponse(BaseModel):
    """The vectors of a request's images, in the order sent."""

    embeddings: list[list[float]] = Field(description="One L2-normalized vector per image.")
    dim: int
    count: int
    model: str = Field(description="The served model: an ONNX path or a models:/ URI.")
    model_version: str | None = Field(description="The registry version that embedded them; null for a file.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "embeddings": [[0.021, -0.113, 0.087]],
                    "dim": 3,
                    "count": 1,
                    "model": "models:/ssl-embedder@champion",
                    "model_version": "4",
                }
            ]
        }
    }


class ErrorResponse(BaseModel):
    detail: str = Field(description="Why the request was refused.")


# FastAPI cannot declare two body encodings for one route: the endpoint reads the body
# itself (inputs.read_images), and this documents both.
EMBED_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more image files (JPEG, PNG, WebP, ...).",
                    }
                },
            },
            "encoding": {"files": {"contentType": "image/*"}},
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "byte"},
                        "description": "Image files in base64, or as data:image/...;base64, URLs.",
                    }
                },
            },
            "examples": {
                "one image": {"summary": "A 2x2 PNG in base64", "value": {"images": [EXAMPLE_PNG_BASE64]}},
                "data URL": {
                    "summary": "The same image as a data URL",
                    "value": {"images": [f"data:image/png;base64,{EXAMPLE_PNG_BASE64}"]},
                },
            },
        },
    },
}

EMBED_RESPONSES = {
    200: {"model": EmbedResponse},
    400: {"model": ErrorResponse, "description": "Malformed JSON, bad base64 or a malformed multipart body."},
    413: {"model": ErrorResponse, "description": "Body over serve.max_upload_mb, or too many images or pixels."},
    415: {"model": ErrorResponse, "description": "A file that is not a decodable image, or another content type."},
    422: {"model": ErrorResponse, "description": "No images, or JSON of the wrong shape."},
    429: {"model": ErrorResponse, "description": "Queue full: retry after the Retry-After header's seconds."},
    503: {
        "model": ErrorResponse,
        "description": "Not answered within serve.request_timeout_s: retry after Retry-After.",
    },
}


@embed_router.post(
    "/embed",
    summary="Embed images",
    response_model=None,
    responses=EMBED_RESPONSES,
    openapi_extra={"requestBody": EMBED_REQUEST_BODY},
)
async def embed(request: Request) -> Response:
    """L2-normalized embeddings of one or more images, as multipart files or base64 JSON.

    ```
    curl -F files=@cat.jpg -F files=@dog.jpg http://127.0.0.1:8000/embed
    curl -H 'Content-Type: application/json' -d "{\\"images\\": [\\"$(base64 -w0 cat.jpg)\\"]}" \\
        http://127.0.0.1:8000/embed
    ```
    Requests arriving together share one ONNX run (dynamic batching); each gets its own vectors.
    """
    server: ServerState = request.app.state.server
    params = server.params
    images = await read_images(request, int(params.max_upload_mb * 2**20), params.max_images_per_request)

    def prepare():  # in a decode thread: the model current now embeds this request, even if a swap follows
        model = server.current
        return model, model.prepare(images)

    try:
        model, vectors = await asyncio.wait_for(server.batcher.embed(len(images), prepare), params.request_timeout_s)
    except asyncio.QueueFull:
        seconds = server.batcher.retry_after_s()
        detail = (
            f"Server busy: {params.max_queued_requests} requests are waiting (serve.max_queued_requests); "
            f"retry after {seconds} s."
        )
        return JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(seconds)})
    except asyncio.TimeoutError:
        seconds = server.batcher.retry_after_s()
        detail = f"Not embedded within {params.request_timeout_s:g} s (serve.request_timeout_s): the server is busy."
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(seconds)})
    body = {
        "embeddings": np.ascontiguousarray(vectors, dtype=np.float32),
        "dim": int(vectors.shape[1]),
        "count": len(images),
        "model": model.served.source,
        "model_version": model.served.version,
    }
    # orjson writes float32 arrays natively (shortest exact digits); json.dumps of tolist() costs
    # tens of times more per vector, and FastAPI's encoder more again.
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@ops_router.get("/health", summary="Whether the model is loaded (as before /health/live and /health/ready)")
async def health(request: Request) -> dict:
    server: ServerState = request.app.state.server
    metadata = server.current.embedder.metadata
    return {
        "status": "ok",
        "ready": server.ready,
        "model": server.current.served.source,
        "embedding_dim": metadata.embedding_dim,
        "image_size": metadata.image_size,
    }


@ops_router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict:
    return {"status": "alive"}


@ops_router.get(
    "/health/ready",
    summary="Readiness: the model answered its warm-up batch",
    responses={503: {"description": "Still warming up, or the warm-up failed (see error)."}},
)
async def ready(request: Request) -> JSONResponse:
    server: ServerState = request.app.state.server
    if server.ready:
        return JSONResponse({"status": "ready", "model_version": server.current.served.version})
    status = "warm-up failed" if server.warm_up_error else "warming up"
    return JSONResponse({"status": status, "error": server.warm_up_error}, status_code=503)


@ops_router.get("/info", summary="The served model, its lineage, and the server's settings")
async def info(request: Request) -> dict:
    server: ServerState = request.app.state.server
    params = server.params
    embedder = server.current.embedder
    metadata = embedder.metadata
    return {
        "model": server.current.describe(),
        "previous_model": server.previous,
        "switched_at": server.switched_at.isoformat() if server.switched_at else None,
        "alias_watch": server.watcher.describe() if server.watcher else None,
        "ready": server.ready,
        "input": {
            "image_size": metadata.image_size,
            "mean": list(metadata.mean),
            "std": list(metadata.std),
            "preprocessing": "RGB, short side resized to image_size (bilinear), center crop, (x/255 - mean) / std",
        },
        "embedding_dim": metadata.embedding_dim,
        "backbone": metadata.backbone,
        "method": metadata.method,
        "execution_provider": embedder.provider,
        "inference_threads": embedder.session.get_session_options().intra_op_num_threads,
        "batching": {
            "max_batch_size": params.max_batch_size,
            "max_batch_wait_ms": params.max_batch_wait_ms,
            "max_queued_requests": params.max_queued_requests,
            "request_timeout_s": params.request_timeout_s,
            "decode_threads": params.decode_threads,
        },
        "limits": {"max_upload_mb": params.max_upload_mb, "max_images_per_request": params.max_images_per_request},
    }


@ops_router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics(request: Request) -> Response:
    server: ServerState = request.app.state.server
    content, content_type = server.metrics.exposition()
    return Response(content, media_type=content_type)
