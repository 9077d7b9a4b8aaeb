"""Reading and checking uploaded photos: bounded reads, byte sniffing, pixel limits, full decode."""

from __future__ import annotations

import io
import logging
import warnings

from fastapi import HTTPException, UploadFile, status
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
CHUNK_BYTES = 256 * 1024


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` of an upload, chunk by chunk; 413 as soon as the file is larger."""
    if upload.size is not None and upload.size > max_bytes:
        raise _too_large(upload.size, max_bytes)
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(total, max_bytes, at_least=True)
        chunks.append(chunk)
    if total == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the uploaded file is empty; choose a photo")
    return b"".join(chunks)


def decode_image(data: bytes, *, max_pixels: int, content_type: str | None = None) -> Image.Image:
    """Decode uploaded bytes into an RGB image, judging the bytes themselves, not the declared type.

    415: not an image, or a format we do not take; 413: more pixels than ``max_pixels``
    (decompression bombs are refused from the header, before decoding); 422: truncated or corrupt data.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)  # reads the header only
    except UnidentifiedImageError:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"the uploaded file is not an image we can read (declared type {content_type or 'none'}); "
            f"send a photo in one of {', '.join(ACCEPTED_FORMATS)}",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the image has too many pixels to decode safely ({exc}); the limit is {max_pixels:,} pixels",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _corrupt(exc) from None

    if image.format not in ACCEPTED_FORMATS:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"images in {image.format} format are not accepted; send one of {', '.join(ACCEPTED_FORMATS)}",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels, "
            "send a smaller photo",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the image has too many pixels to decode safely ({exc})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(exc) from None


def _too_large(size: int, limit: int, at_least: bool = False) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the upload is {'at least ' if at_least else ''}{size:,} bytes; the limit is {limit:,} bytes, "
        "send a smaller photo",
    )


def _corrupt(exc: Exception) -> HTTPException:
    logger.info("rejected a corrupt upload: %s", exc)
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"the image data is truncated or corrupt ({exc}); upload the photo again or try another file",
    )
