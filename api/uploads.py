"""Reading and checking uploaded photos: bounded reads, byte sniffing, pixel and shape limits, full decode."""

from __future__ import annotations

import io
import logging

from fastapi import HTTPException, UploadFile, status
from PIL import Image

from catalog.images import ImageCleaningConfig, ImageRejected, decode_photo, open_photo, upright_rgb

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


def open_upload(
    data: bytes, *, max_pixels: int, config: ImageCleaningConfig, content_type: str | None = None
) -> Image.Image:
    """Open uploaded bytes and check them from the header alone (nothing decoded yet), judging the bytes
    themselves, not the declared type.

    Opening is ingest's (``catalog.images.open_photo``, with the catalogue's cleaning ``config``). Refused:
    415, not an image or a format we do not take; 413, more pixels than ``max_pixels`` (decompression bombs);
    422, a shape no photo of an item has (beyond ``config.max_aspect_ratio``, or a side under
    ``config.min_side``).
    """
    try:
        image = open_photo(io.BytesIO(data), config)  # reads the header only
    except ImageRejected as exc:
        raise refusal(exc, content_type, max_pixels) from None
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
    return image


def decode_image(
    data: bytes, *, max_pixels: int, config: ImageCleaningConfig, content_type: str | None = None
) -> Image.Image:
    """Decode uploaded bytes into an upright RGB image: ``open_upload``'s checks, then ingest's decode
    (``catalog.images``), so the search pipeline can prepare the photo exactly as the catalogue photos were.
    422 for truncated or corrupt data."""
    image = open_upload(data, max_pixels=max_pixels, config=config, content_type=content_type)
    try:
        return upright_rgb(decode_photo(image, config))
    except ImageRejected as exc:
        raise refusal(exc, content_type, max_pixels) from None


def refusal(exc: ImageRejected, content_type: str | None, max_pixels: int) -> HTTPException:
    """The HTTP answer to a photo `catalog.images` rejected."""
    if exc.reason == "image_not_an_image":
        return HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"the uploaded file is not an image we can read (declared type {content_type or 'none'}); "
            f"send a photo in one of {', '.join(ACCEPTED_FORMATS)}",
        )
    if exc.reason == "image_decompression_bomb":
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the image has too many pixels to decode safely ({exc.detail}); the limit is {max_pixels:,} pixels",
        )
    if exc.reason == "image_aspect_ratio":
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the photo is far too wide or too tall for a photo of an item ({exc.detail}); "
            "crop it closer to the item",
        )
    if exc.reason == "image_too_small":
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"the photo is too small ({exc.detail}); send a larger photo"
        )
    logger.info("rejected a corrupt upload: %s", exc)
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"the image data is truncated or corrupt ({exc.detail}); upload the photo again or try another file",
    )


def _too_large(size: int, limit: int, at_least: bool = False) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the upload is {'at least ' if at_least else ''}{size:,} bytes; the limit is {limit:,} bytes, "
        "send a smaller photo",
    )
