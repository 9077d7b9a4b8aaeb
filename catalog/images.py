"""Verify, clean and cache listing photos: Pillow verify + full decode, EXIF orientation, RGB, padded square.

`encode_photo` is the one definition of what a photo looks like to the models: ingest stores its bytes
(`clean_image`) and the search pipeline decodes them for every query photo (`prepare_photo`), so a query
is compared with catalogue photos made exactly the same way. Every step does work bounded by the photo's
pixel count (itself bounded by `max_pixels`), never by its shape: absurd aspect ratios are refused from
the header, JPEGs are decoded at a reduced DCT scale, and the resize downscales by whole factors first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from core.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

# v2: aspect-ratio limit, downscaling by whole factors first (reducing_gap), one preparation for queries
PIPELINE_VERSION = 2
# Pillow: a gap of 3 is indistinguishable from a plain resize; it only applies from a 6x downscale on
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ImageCleaningConfig:
    """How photos are cleaned. `max_pixels` guards against decompression bombs (Pillow's own default).

    `max_aspect_ratio` (long side / short side): the widest photo of the development export is 4.1:1
    (docs/catalog.md), 8:1 leaves room for panoramas and long items while a padded 256 px square still
    shows the item at least 32 px tall."""

    size: int = 256
    pad_color: tuple[int, int, int] = (0, 0, 0)
    max_pixels: int = 89_478_485
    min_side: int = 8
    max_aspect_ratio: float = 8.0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"image size must be between 16 and 4096 pixels, got {self.size}")
        if self.max_pixels < self.size * self.size:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be at least size*size ({self.size**2})")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")

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


def save_config(config: ImageCleaningConfig, path: str | os.PathLike) -> None:
    """Record the settings a catalogue's photos were cleaned with (ingest), for the query side."""
    write_json_atomic(Path(path), dataclasses.asdict(config))


def load_config(path: str | os.PathLike) -> ImageCleaningConfig:
    """The settings recorded by `save_config`; the defaults when there is no record (a catalogue ingested
    before the record existed, with the default `--image-size`)."""
    path = Path(path)
    if not path.is_file():
        logger.info("no record of how the catalogue photos were cleaned (%s); assuming the defaults", path.name)
        return ImageCleaningConfig()
    values = json.loads(path.read_text(encoding="utf-8"))
    values["pad_color"] = tuple(values["pad_color"])
    known = {f.name for f in dataclasses.fields(ImageCleaningConfig)}
    return ImageCleaningConfig(**{k: v for k, v in values.items() if k in known})


def check_dimensions(width: int, height: int, config: ImageCleaningConfig) -> None:
    """Refuse a shape no photo of an item has, from the header alone (before any decoding)."""
    short, long = min(width, height), max(width, height)
    if short < 1 or long / short > config.max_aspect_ratio:
        ratio = "no height" if not short else f"{long / short:,.{0 if long >= 100 * short else 1}f}:1"
        raise ImageRejected(
            "image_aspect_ratio",
            f"{width}x{height} has an aspect ratio of {ratio}, the limit is {config.max_aspect_ratio:g}:1",
        )
    if short < config.min_side:
        raise ImageRejected("image_too_small", f"{width}x{height}, minimum side {config.min_side}")


def open_photo(source: str | os.PathLike | BinaryIO, config: ImageCleaningConfig) -> PILImage.Image:
    """Open a photo (header only) and check its pixel count and shape. Raises ImageRejected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            image = PILImage.open(source)
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
            raise ImageRejected("image_decompression_bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageRejected("image_not_an_image", "Pillow cannot identify the file as an image") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected("image_corrupt", f"cannot open: {exc}") from None
    width, height = image.size
    try:
        if width * height > config.max_pixels:
            raise ImageRejected(
                "image_decompression_bomb", f"{width}x{height} = {width * height} pixels, limit {config.max_pixels}"
            )
        check_dimensions(width, height, config)
    except ImageRejected:
        image.close()
        raise
    return image


def decode_photo(image: PILImage.Image, config: ImageCleaningConfig) -> PILImage.Image:
    """Decode an opened photo, a JPEG at the smallest DCT scale still at least `size` on both sides.

    Raises ImageRejected (truncated, corrupt, or a bomb found while decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            if image.format == "JPEG":
                image.draft("RGB", (config.size, config.size))  # still reads all the data
            image.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        image.close()
        raise ImageRejected("image_decompression_bomb", str(exc)) from None
    except OSError as exc:
        image.close()
        reason = "image_truncated" if "truncated" in str(exc).lower() else "image_corrupt"
        raise ImageRejected(reason, f"decode failed: {exc}") from None
    except Exception as exc:  # Pillow raises many types here (SyntaxError, struct.error, EOFError...)
        image.close()
        raise ImageRejected("image_corrupt", f"decode failed: {type(exc).__name__}: {exc}") from None
    return image


def upright_rgb(image: PILImage.Image) -> PILImage.Image:
    """EXIF orientation applied, RGB with transparency on white."""
    return to_rgb(ImageOps.exif_transpose(image))


def load_verified(path: str | os.PathLike, config: ImageCleaningConfig = ImageCleaningConfig()) -> PILImage.Image:
    """Open a photo, verify it, decode it fully and return it upright in RGB. Raises ImageRejected."""
    return _load_verified(Path(path), config)[0]


def _load_verified(path: Path, config: ImageCleaningConfig) -> tuple[PILImage.Image, tuple[int, int]]:
    if not path.is_file():
        raise ImageRejected("image_file_missing", f"no file at {path}")
    if path.stat().st_size == 0:
        raise ImageRejected("image_empty_file", f"{path} is empty")
    return _decode_verified(lambda: path, config)


def _decode_verified(
    source: Callable[[], Path | BinaryIO], config: ImageCleaningConfig
) -> tuple[PILImage.Image, tuple[int, int]]:
    """Verify, decode and turn upright one photo; ``source`` gives a fresh file (or path) on each call."""
    # verify() checks structure without decoding and leaves the object unusable, so open twice.
    with open_photo(source(), config) as probe:
        try:
            probe.verify()
        except Exception as exc:  # Pillow raises many types here (SyntaxError, struct.error, OSError...)
            raise ImageRejected("image_corrupt", f"verify failed: {type(exc).__name__}: {exc}") from None
    image = open_photo(source(), config)
    source_size = image.size
    return upright_rgb(decode_photo(image, config)), source_size


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
    """Resize to fit a size x size square with the aspect ratio kept, then pad the rest with `color`.

    The geometry of `ImageOps.pad`; the resize reduces by whole factors first (`reducing_gap`), so it
    costs about the input's pixel count, never more, whatever the shape."""
    width, height = image.size
    if width > height:
        fitted = (size, max(1, round(height / width * size)))
    elif width < height:
        fitted = (max(1, round(width / height * size)), size)
    else:
        fitted = (size, size)
    resized = image.resize(fitted, PILImage.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    if fitted == (size, size):
        return resized
    square = PILImage.new(resized.mode, (size, size), color)
    square.paste(resized, (round((size - fitted[0]) * 0.5), round((size - fitted[1]) * 0.5)))
    return square


def encode_photo(image: PILImage.Image, config: ImageCleaningConfig, comment: str = "") -> bytes:
    """A decoded photo as the catalogue stores it: upright, RGB (transparency on white), fitted into a
    `size` square padded with `pad_color`, JPEG at `jpeg_quality`. Raises ImageRejected for a shape
    `check_dimensions` refuses."""
    check_dimensions(*image.size, config)
    square = pad_to_square(upright_rgb(image), config.size, config.pad_color)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=config.jpeg_quality, comment=comment)
    return buffer.getvalue()


def prepare_photo(image: PILImage.Image, config: ImageCleaningConfig) -> PILImage.Image:
    """A decoded photo with exactly the pixels a catalogue photo cleaned from the same source has (the
    stored JPEG included): what every query photo goes through before the image tower."""
    with PILImage.open(io.BytesIO(encode_photo(image, config))) as stored:
        stored.load()
        return stored.convert("RGB")


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
    data = source.read_bytes()
    key = source_key(data, config)
    cached = _cached(destination, key)
    if cached is not None:
        check_dimensions(*cached, config)  # the shape limits are settings too, checked on every run
        return CleanedImage(config.size, config.size, cached[0], cached[1], key, cached=True)
    if not data:
        raise ImageRejected("image_empty_file", f"{source} is empty")
    cleaned, result = clean_photo(data, config)
    write_atomic(destination, lambda tmp: tmp.write_bytes(cleaned))
    return result


def clean_photo(data: bytes, config: ImageCleaningConfig = ImageCleaningConfig()) -> tuple[bytes, CleanedImage]:
    """The catalogue's JPEG of one photo's bytes, and its record: what `clean_image` writes for a file (ingest)
    and the API's listing writes store for an upload, byte for byte. Raises ImageRejected."""
    if not data:
        raise ImageRejected("image_empty_file", "the photo is empty")
    key = source_key(data, config)
    image, (width, height) = _decode_verified(lambda: io.BytesIO(data), config)
    cleaned = encode_photo(image, config, comment=f"{key};{width}x{height}")
    return cleaned, CleanedImage(config.size, config.size, width, height, key, cached=False)
