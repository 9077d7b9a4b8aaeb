import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from catalog.images import (
    ImageCleaningConfig,
    ImageRejected,
    clean_image,
    load_config,
    load_verified,
    pad_to_square,
    prepare_photo,
    save_config,
)

CONFIG = ImageCleaningConfig(size=64)


def jpeg(path, size=(80, 40), colour=(200, 20, 20), exif=None):
    image = Image.new("RGB", size, colour)
    image.save(path, format="JPEG", quality=95, **({"exif": exif} if exif else {}))
    return path


def test_clean_image_pads_to_a_square_keeping_the_aspect(tmp_path):
    source = jpeg(tmp_path / "wide.jpg", size=(80, 40))
    result = clean_image(source, tmp_path / "out" / "wide.jpg", CONFIG)
    assert (result.width, result.height) == (64, 64)
    assert (result.source_width, result.source_height) == (80, 40)
    assert not result.cached
    pixels = np.asarray(Image.open(tmp_path / "out" / "wide.jpg"))
    assert pixels.shape == (64, 64, 3)
    # 80x40 scaled to 64x32: the middle rows are the red photo, top and bottom bands are black padding.
    assert pixels[32, 32, 0] > 150 and pixels[32, 32, 1] < 60
    assert pixels[:12].max() < 40 and pixels[-12:].max() < 40
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


def test_pad_colour_is_configurable():
    square = pad_to_square(Image.new("RGB", (10, 40), (0, 0, 255)), 40, color=(255, 255, 255))
    assert square.getpixel((0, 20)) == (255, 255, 255)
    assert square.getpixel((20, 20)) == (0, 0, 255)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    source = jpeg(tmp_path / "rotated.jpg", size=(60, 20), exif=exif.tobytes())
    assert load_verified(source, CONFIG).size == (20, 60)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    Image.new("RGB", (30, 30), (10, 200, 10)).convert(mode).save(path)
    assert load_verified(path, CONFIG).mode == "RGB"


def test_transparent_background_becomes_white(tmp_path):
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_verified(tmp_path / "clear.png", CONFIG).getpixel((5, 5)) == (255, 255, 255)


def bomb_png(width=40_000, height=40_000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[data.index(b"IDAT") + 6] ^= 0xFF
    return bytes(data)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "image_empty_file"),
        (b"<html>not an image</html>", "image_not_an_image"),
        (truncated_jpeg(), "image_truncated"),
        (corrupt_png(), "image_corrupt"),
        (bomb_png(), "image_decompression_bomb"),  # Pillow's own error (> 2x its limit)
        (bomb_png(12_000, 12_000), "image_decompression_bomb"),  # Pillow's warning, turned into a rejection
    ],
)
def test_bad_files_are_rejected_with_their_reason(tmp_path, data, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageRejected) as info:
        clean_image(path, tmp_path / "out.jpg", CONFIG)
    assert info.value.reason == reason
    assert not (tmp_path / "out.jpg").exists()


def test_configured_pixel_limit_is_enforced(tmp_path):
    (tmp_path / "big.png").write_bytes(bomb_png(3_000, 3_000))
    with pytest.raises(ImageRejected, match="limit 1000000") as info:
        load_verified(tmp_path / "big.png", ImageCleaningConfig(size=64, max_pixels=1_000_000))
    assert info.value.reason == "image_decompression_bomb"


def test_missing_and_tiny_files_are_rejected(tmp_path):
    with pytest.raises(ImageRejected) as info:
        clean_image(tmp_path / "absent.jpg", tmp_path / "out.jpg", CONFIG)
    assert info.value.reason == "image_file_missing"
    jpeg(tmp_path / "tiny.jpg", size=(4, 4))
    with pytest.raises(ImageRejected) as info:
        clean_image(tmp_path / "tiny.jpg", tmp_path / "out.jpg", CONFIG)
    assert info.value.reason == "image_too_small"


def test_cache_skips_work_only_when_source_and_settings_match(tmp_path):
    source, out = jpeg(tmp_path / "a.jpg"), tmp_path / "out.jpg"
    first = clean_image(source, out, CONFIG)
    written = out.stat().st_mtime_ns
    again = clean_image(source, out, CONFIG)
    assert again.cached and out.stat().st_mtime_ns == written
    assert (again.source_key, again.source_width, again.source_height) == (first.source_key, 80, 40)
    resized = clean_image(source, out, ImageCleaningConfig(size=96))  # other settings
    assert not resized.cached and Image.open(out).size == (96, 96)
    jpeg(source, colour=(0, 0, 250))  # the photo changed
    changed = clean_image(source, out, ImageCleaningConfig(size=96))
    assert not changed.cached and changed.source_key != resized.source_key
    out.write_bytes(b"garbage")  # a damaged cleaned file is redone, not trusted
    assert not clean_image(source, out, ImageCleaningConfig(size=96)).cached


def test_config_validation():
    with pytest.raises(ValueError, match="image size"):
        ImageCleaningConfig(size=4)
    with pytest.raises(ValueError, match="max_pixels"):
        ImageCleaningConfig(size=256, max_pixels=100)


def png(path, size, colour=(30, 160, 90), mode="RGB"):
    Image.new(mode, size, colour).save(path, format="PNG")
    return path


@pytest.mark.parametrize("size", [(20_000, 1), (30_000, 9), (9, 30_000), (400, 40)])
def test_absurd_aspect_ratios_are_rejected_from_the_header(tmp_path, size):
    path = tmp_path / "strip.png"
    path.write_bytes(bomb_png(*size))  # header only: refused before any pixel data is read
    with pytest.raises(ImageRejected, match=f"{size[0]}x{size[1]} has an aspect ratio") as info:
        clean_image(path, tmp_path / "out.jpg", CONFIG)
    assert info.value.reason == "image_aspect_ratio"
    assert "limit is 8:1" in info.value.detail
    assert not (tmp_path / "out.jpg").exists()


def test_the_widest_allowed_photo_is_padded_not_cropped(tmp_path):
    source = png(tmp_path / "panorama.png", (4000, 500))  # 8:1, at the limit
    result = clean_image(source, tmp_path / "out.jpg", ImageCleaningConfig())
    assert (result.width, result.height, result.source_width) == (256, 256, 4000)
    pixels = np.asarray(Image.open(tmp_path / "out.jpg"))
    assert pixels.shape == (256, 256, 3)
    assert pixels[128, :, 1].min() > 120  # the whole width is kept in a 32-pixel band across the middle
    assert pixels[:100].max() < 40 and pixels[-100:].max() < 40


def test_the_shape_limit_holds_for_photos_already_in_the_cache(tmp_path):
    source, out = png(tmp_path / "long.png", (400, 40)), tmp_path / "out.jpg"
    assert not clean_image(source, out, ImageCleaningConfig(size=64, max_aspect_ratio=12)).cached
    with pytest.raises(ImageRejected) as info:
        clean_image(source, out, ImageCleaningConfig(size=64, max_aspect_ratio=8))
    assert info.value.reason == "image_aspect_ratio"


@pytest.mark.parametrize("size", [(80, 40), (40, 300), (255, 257), (300, 300), (1000, 700)])
def test_padding_keeps_image_ops_geometry(size):
    """Up to a 6x downscale the square is ImageOps.pad's, pixel for pixel (beyond, the resize averages
    whole blocks first, Pillow's reducing_gap, so its cost follows the input's pixel count)."""
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    ours = np.asarray(pad_to_square(noise, 256, (10, 20, 30)))
    assert np.array_equal(ours, np.asarray(ImageOps.pad(noise, (256, 256), color=(10, 20, 30))))


def exif_rotated_jpeg(path, size=(300, 120)):
    exif = Image.Exif()
    exif[0x0112] = 6
    noise = np.random.default_rng(2).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: exif_rotated_jpeg(p / "rotated.jpg"),
        lambda p: exif_rotated_jpeg(p / "large.jpg", size=(2400, 1500)),  # decoded at a reduced DCT scale
        lambda p: png(p / "clear.png", (200, 90), (255, 0, 0, 60), mode="RGBA"),
        lambda p: png(p / "large.png", (1800, 1000)),  # reduced by whole factors before the resize
        lambda p: png(p / "tiny.png", (12, 30)),  # upscaled
    ],
)
def test_query_preparation_gives_the_pixels_ingest_stores(tmp_path, make):
    """A query photo (decoded as ingest decodes, then `prepare_photo`) has exactly the pixels of the
    catalogue photo cleaned from the same file."""
    config = ImageCleaningConfig()
    source = make(tmp_path)
    clean_image(source, tmp_path / "stored.jpg", config)
    with Image.open(tmp_path / "stored.jpg") as stored:  # as `marketsearch embed` reads it
        stored.load()
        catalogue = np.asarray(stored.convert("RGB"))
    query = prepare_photo(load_verified(source, config), config)
    assert query.size == (256, 256) and query.mode == "RGB"
    assert np.array_equal(np.asarray(query), catalogue)


def test_query_preparation_refuses_what_ingest_refuses():
    with pytest.raises(ImageRejected) as info:
        prepare_photo(Image.new("RGB", (900, 9)), ImageCleaningConfig())
    assert info.value.reason == "image_aspect_ratio"


def test_the_cleaning_settings_are_recorded_for_the_query_side(tmp_path):
    config = ImageCleaningConfig(size=128, pad_color=(255, 255, 255), max_aspect_ratio=6)
    save_config(config, tmp_path / "photo-config.json")
    assert load_config(tmp_path / "photo-config.json") == config
    assert load_config(tmp_path / "absent.json") == ImageCleaningConfig()
