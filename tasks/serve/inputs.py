"""What a client sends to ``POST /embed``, read safely: every bad input is a 4xx with a reason.

Two encodings of the same request, chosen by its content type:

* ``multipart/form-data``: one or more ``files`` parts (``curl -F files=@cat.jpg``);
* ``application/json``: ``{"images": ["<base64>", ...]}``, each item an image file's
  bytes in standard base64 (line breaks allowed), optionally as a ``data:image/...;base64,`` URL.

Limits, checked before anything is decoded: a body over ``serve.max_upload_mb``
(413, refused from its Content-Length before it is read, or as soon as a chunked
body passes it), more than ``serve.max_images_per_request`` images (413). Then 400
for malformed JSON, bad base64 or a malformed multipart body, 422 for a request
without images or of the wrong shape, 415 for another content type and for a file
that is not a decodable image (:func:`decode_image`, run in a decode thread).
"""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import HTTPException, Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ssl_core.image_decode import UndecodableImageError
from ssl_core.image_decode import decode_image as decode_untrusted_image

MAX_IMAGE_PIXELS = 40_000_000  # larger is refused from the header, before decoding (decompression bombs)
FORM_FIELD = "files"
JSON_FIELD = "images"
HOW_TO_SEND = 'send multipart/form-data with one or more "files", or application/json {"images": ["<base64>", ...]}'


async def read_images(request: Request, max_bytes: int, max_images: int) -> list[tuple[str, bytes]]:
    """The request's images as (name, encoded bytes): file names for uploads, ``images[i]`` for JSON."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        images = await _multipart_images(request, body)
    elif content_type == "application/json" or content_type.endswith("+json"):
        images = _json_images(body)
    elif not body:
        raise HTTPException(422, f"No images: {HOW_TO_SEND}.")
    else:
        raise HTTPException(415, f"Content type {content_type or '(none)'!r} is not accepted: {HOW_TO_SEND}.")
    if not images:
        raise HTTPException(422, f"No images: {HOW_TO_SEND}.")
    if len(images) > max_images:
        raise HTTPException(413, f"{len(images)} images in one request; the limit is {max_images}.")
    return images


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``max_bytes``."""
    limit = f"the {max_bytes / 2**20:g} MB limit (serve.max_upload_mb)"
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPException(413, f"Upload of {int(length)} bytes exceeds {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"Upload exceeds {limit}.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_images(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    async def stream():
        yield body
        yield b""

    # The body is bounded already: the part counts need no limit of their own.
    parser = MultiPartParser(request.headers, stream(), max_files=float("inf"), max_fields=float("inf"))
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"Malformed multipart body: {error.message}") from None
    try:
        parts = form.getlist(FORM_FIELD)
        if not all(isinstance(part, UploadFile) for part in parts):
            raise HTTPException(422, f'Every "{FORM_FIELD}" part must be a file upload (curl -F files=@cat.jpg).')
        return [(part.filename or "upload", part.file.read()) for part in parts]
    finally:
        await form.close()


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"The body is not valid JSON ({error}); {HOW_TO_SEND}.") from None
    items = payload.get(JSON_FIELD) if isinstance(payload, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise HTTPException(422, f'The JSON must be an object whose "{JSON_FIELD}" is a list of base64 strings.')
    return [(f"{JSON_FIELD}[{i}]", _base64(item, f"{JSON_FIELD}[{i}]")) for i, item in enumerate(items)]


def _base64(text: str, name: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,<payload>
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise HTTPException(400, f"{name}: a data URL must be base64 (data:image/png;base64,...).")
    try:
        # Line breaks are allowed (MIME base64, `base64` without -w0); any other stray character is an error.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise HTTPException(400, f"{name}: not valid base64 ({error}).") from None


def decode_image(data: bytes, filename: str) -> Image.Image:
    """Fully decoded RGB image, or HTTP 415 saying why not (413 for too many pixels).

    The decoding is :func:`ssl_core.image_decode.decode_image`, the batch embedding
    job's too, so both give the same vectors for the same file.
    """
    try:
        return decode_untrusted_image(data, MAX_IMAGE_PIXELS)
    except UndecodableImageError as error:
        # Its reasons name the cause first: a decompression bomb is too large, the rest is not an image.
        status = 413 if str(error).startswith("DecompressionBomb") else 415
        raise HTTPException(status, f"{filename}: {error}.") from None
