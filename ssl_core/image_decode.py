"""Decoding an untrusted image file: fully, safely, or a one-line reason why not.

Batch embedding decodes every file of a dataset it did not write; a file may be
truncated, not an image at all, or a decompression bomb (a few kB that claim
gigapixels). :func:`decode_image` checks the pixel count from the header before
any pixel is decoded, then decodes every pixel, so a truncated file fails here and
not later in a batch. The reasons read like the ingest stage's quarantine reasons.

    try:
        image = decode_image(data, max_pixels=89_478_485)
    except UndecodableImageError as error:
        skipped.append((path, str(error)))
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError


class UndecodableImageError(ValueError):
    """The bytes are not a fully decodable image of at most ``max_pixels``; the message says why."""


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Fully decoded RGB image of ``data``.

    Args:
        data: the file's bytes.
        max_pixels: width * height above which the file is refused before decoding.

    Raises:
        UndecodableImageError: empty, unknown format, corrupt or truncated, or too many pixels.
    """
    if not data:
        raise UndecodableImageError("empty file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; a warning must refuse the file too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                # From the header, before any pixel is decoded.
                if width * height <= max_pixels:
                    # convert() decodes every pixel: a truncated file fails now, not in a batch.
                    return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UndecodableImageError(f"{type(error).__name__}: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UndecodableImageError(f"corrupt image ({type(error).__name__}: {error})") from None
    raise UndecodableImageError(f"DecompressionBomb: {width}x{height} pixels exceeds the limit of {max_pixels}")
