"""Verify, clean and cache listing photos: Pillow verify + full decode, EXIF orientation, RGB, padded square."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from core.files import write_atomic

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1


@dataclass(frozen=True)
class ImageCleaningConfig:
    """How photos are cleaned. `max_pixels` guards against decompression bombs (Pillow's own default)."""

    size: int = 256
    pad_color: tuple[int, int, int] = (0, 0, 0)
    max_pixels: int = 89_478_485
    min_side: int = 8
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"image size must be between 16 and 4096 pixels, got {self.size}")
        if self.max_pixels < self.size * self.size:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be at least size*size ({self.size**2})")

    def key(self) -> str:
        color = "".join(f"{c:02x}" for c in self.pad_color)
        return f"s{self.size}-p{color}-q{self.jpeg_quality}-v{PIPELINE_VERSION}"


class ImageRejected(Exception):
    """A photo that cannot be used; `reason` is a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CleanedImage:
    width: int
    height: int
    source_width: int
    source_height: int
    source_key: str
    cached: bool


def source_key(data: bytes, config: ImageCleaningConfig) -> str:
    """Cache key of one cleaned photo: the source bytes' hash and the cleaning settings."""
    return f"{hashlib.sha256(data).hexdigest()[:24]}-{config.key()}"


def _open(path: Path, max_pixels: int) -> PILImage.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            image = PILImage.open(path)
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
            raise ImageRejected("image_decompression_bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageRejected("image_not_an_image", "Pillow cannot identify the file as an image") from None
        except OSError as exc:
            raise ImageRejected("image_corrupt", f"cannot open: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageRejected(
            "image_decompression_bomb", f"{width}x{height} = {width * height} pixels, limit {max_pixels}"
        )
    return image


def load_verified(path: str | os.PathLike, config: ImageCleaningConfig = ImageCleaningConfig()) -> PILImage.Image:
    """Open a photo, verify it, decode it fully and return it upright in RGB. Raises ImageRejected."""
    return _load_verified(Path(path), config)[0]


def _load_verified(path: Path, config: ImageCleaningConfig) -> tuple[PILImage.Image, tuple[int, int]]:
    if not path.is_file():
        raise ImageRejected("image_file_missing", f"no file at {path}")
    if path.stat().st_size == 0:
        raise ImageRejected("image_empty_file", f"{path} is empty")
    # verify() checks structure without decoding and leaves the object unusable, so open twice.
    with _open(path, config.max_pixels) as probe:
        try:
            probe.verify()
        except Exception as exc:  # Pillow raises many types here (SyntaxError, struct.error, OSError...)
            raise ImageRejected("image_corrupt", f"verify failed: {type(exc).__name__}: {exc}") from None
    image = _open(path, config.max_pixels)
    source_size = image.size
    try:
        if image.format == "JPEG":
            image.draft("RGB", (config.size, config.size))  # decode at a reduced DCT scale, still reads all data
        image.load()
    except OSError as exc:
        image.close()
        reason = "image_truncated" if "truncated" in str(exc).lower() else "image_corrupt"
        raise ImageRejected(reason, f"decode failed: {exc}") from None
    except Exception as exc:
        image.close()
        raise ImageRejected("image_corrupt", f"decode failed: {type(exc).__name__}: {exc}") from None
    if min(source_size) < config.min_side:
        raise ImageRejected("image_too_small", f"{source_size[0]}x{source_size[1]}, minimum side {config.min_side}")
    image = ImageOps.exif_transpose(image)
    return to_rgb(image), source_size


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """RGB, with transparency composited onto white (a transparent PNG background is not black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def pad_to_square(image: PILImage.Image, size: int, color: tuple[int, int, int] = (0, 0, 0)) -> PILImage.Image:
    """Resize to fit a size x size square with the aspect ratio kept, then pad the rest with `color`."""
    return ImageOps.pad(image, (size, size), method=PILImage.Resampling.BICUBIC, color=color)


def save_jpeg_atomic(image: PILImage.Image, path: Path, quality: int = 90, comment: str = "") -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="JPEG", quality=quality, comment=comment))


def _cached(destination: Path, key: str) -> tuple[int, int] | None:
    """The source size recorded in an already cleaned file, if it was made from the same source with the
    same settings. The record lives in the JPEG comment, so the cache survives an interrupted ingest."""
    if not destination.is_file():
        return None
    try:
        with PILImage.open(destination) as done:
            comment = done.info.get("comment", b"")
    except (OSError, ValueError):
        return None
    text = comment.decode("ascii", "replace") if isinstance(comment, bytes) else str(comment)
    cached_key, _, size = text.partition(";")
    if cached_key != key:
        return None
    try:
        width, height = (int(v) for v in size.split("x"))
    except ValueError:
        return None
    return width, height


def clean_image(
    source: str | os.PathLike, destination: str | os.PathLike, config: ImageCleaningConfig = ImageCleaningConfig()
) -> CleanedImage:
    """Clean `source` into `destination` (atomically) unless that exact work is already on disk.

    Raises ImageRejected for a photo that must be quarantined."""
    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise ImageRejected("image_file_missing", f"no file at {source}")
    key = source_key(source.read_bytes(), config)
    cached = _cached(destination, key)
    if cached is not None:
        return CleanedImage(config.size, config.size, cached[0], cached[1], key, cached=True)
    image, source_size = _load_verified(source, config)
    square = pad_to_square(image, config.size, config.pad_color)
    save_jpeg_atomic(square, destination, config.jpeg_quality, comment=f"{key};{source_size[0]}x{source_size[1]}")
    return CleanedImage(square.width, square.height, source_size[0], source_size[1], key, cached=False)
