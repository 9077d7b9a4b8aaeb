"""A deterministic synthetic catalogue in the same raw format as the real marketplace export.

It goes through the same ingest path as real data, and is the embedded default for the demo job and the
tests. Text and photos both carry the category (vocabulary / drawn shape) and the colour (colour word in
the title / fill colour), with noise so the task is learnable but not trivial, and a small share of
deliberately broken rows and files exercises the quarantine.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import random
import shutil
import struct
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from catalog.demo_draw import SHAPES, draw_photo
from catalog.demo_vocab import CATEGORIES, COLOURS, CONDITIONS, GENERIC_PHRASES, LOCATIONS, CategorySpec

logger = logging.getLogger(__name__)

MANIFEST_NAME = "demo-manifest.json"
PRODUCT_HEADER = ("", "id", "product_name", "category", "product_description", "price", "location")
IMAGE_HEADER = ("", "id", "product_id", "bucket_link", "image_ref", "create_time")
BUCKET = "https://demo-marketplace.invalid/images/"
PHOTO_SIZES = ((256, 256), (320, 240), (240, 320), (360, 270), (300, 300))
LAST_DAY = datetime.date(2022, 2, 28)

# Shares of noise that keep the task from being trivial.
CONFUSED_SHAPE_SHARE = 0.08  # photo shows another category's shape
NO_COLOUR_WORD_SHARE = 0.15  # title does not name the colour
GENERIC_TITLE_SHARE = 0.15  # title without the item noun ("Bosch - must go")
VAGUE_DESCRIPTION_SHARE = 0.2  # description with no item noun and no category words
DISTRACTOR_SHARE = 0.2  # description also mentions an item of another category
TEXT_ONLY_SHARE = 0.03  # listings without a photo (valid, text-only)
FREE_SHARE = 0.04


class DemoExport(NamedTuple):
    products_csv: Path
    images_csv: Path
    image_dir: Path


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ref(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(16))


def _csv_field(value: str) -> str:
    """Quote like the real export: only for a comma, a quote or LF; a bare CR stays unquoted."""
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_line(fields) -> str:
    return ",".join(_csv_field(str(f)) for f in fields) + "\n"


def _format_price(value: float) -> str:
    return f"£{value:,.2f}"


def _price(rng: random.Random, spec: CategorySpec) -> float:
    low, high = spec.price_range
    value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return round(value) if value > 20 else round(value * 2) / 2


def _title(rng: random.Random, brand: str, item: str, colour: str, condition: str) -> str:
    colour_word = "" if rng.random() < NO_COLOUR_WORD_SHARE else colour
    if rng.random() < GENERIC_TITLE_SHARE:
        parts = [brand, colour_word, rng.choice(["- must go", "bargain", "for sale", "- quick sale"])]
    else:
        pattern = rng.randrange(4)
        if pattern == 0:
            parts = [colour_word.capitalize(), brand, item]
        elif pattern == 1:
            parts = [brand, item, "in", colour_word] if colour_word else [brand, item]
        elif pattern == 2:
            parts = [item.capitalize(), "-", colour_word, condition]
        else:
            parts = [condition.capitalize(), colour_word, brand, item]
    return " ".join(p for p in parts if p).replace("  ", " ")


def _description(rng: random.Random, spec: CategorySpec, item: str, colour: str, condition: str) -> str:
    words = rng.sample(spec.words, k=min(3, len(spec.words)))
    if rng.random() < VAGUE_DESCRIPTION_SHARE:
        sentences = [f"{condition.capitalize()}", f"Colour {colour}" if rng.random() < 0.5 else ""]
    else:
        sentences = [
            f"{condition.capitalize()} {item} for sale",
            f"Colour: {colour}" if rng.random() < 0.6 else "",
            f"Features {words[0]}, {words[1]} and {words[2]}" if rng.random() < 0.5 else f"{words[0]} and {words[1]}",
        ]
    if rng.random() < DISTRACTOR_SHARE:
        other = rng.choice([c for c in CATEGORIES if c.name != spec.name])
        other_item = rng.choice(other.subcategories[rng.choice(sorted(other.subcategories))])
        sentences.append(rng.choice([f"Also selling a {other_item}", f"Would swap for a {other_item}"]))
    sentences.extend(rng.sample(GENERIC_PHRASES, k=rng.randint(1, 3)))
    joiner = rng.choice(["\r", ". ", "\r\r", "  "])  # bare CRs inside the field, as in the real export
    return joiner.join(s for s in sentences if s) + rng.choice(["", " ", "  "])


def _bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG that declares width x height pixels: Pillow refuses it as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _corrupt_png(jpeg: bytes) -> bytes:
    """The photo re-encoded as PNG (under a .jpg name) with one byte of its pixel data flipped, so the
    chunk checksum no longer matches and Pillow's verify() rejects it."""

    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    position = data.index(b"IDAT") + 40
    data[position] ^= 0xFF
    return bytes(data)


def _jpeg_bytes(image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepare_out_dir(out_dir: Path) -> Path:
    image_dir = out_dir / "images"
    if image_dir.is_dir() and any(image_dir.iterdir()):
        if not (out_dir / MANIFEST_NAME).is_file():
            raise FileExistsError(
                f"{image_dir} already holds files that were not written by demo-data; choose an empty --out folder"
            )
        shutil.rmtree(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir


def generate_demo_export(
    out_dir: str | os.PathLike, n_listings: int = 600, seed: int = 0, *, progress: bool = True
) -> DemoExport:
    """Write Products.csv, Images.csv and images/ for `n_listings` good listings (plus a few broken rows).

    Same seed -> byte-identical files. Also writes demo-manifest.json with the expected ingest counts."""
    if not 13 <= n_listings <= 100_000:
        raise ValueError(f"n_listings must be between 13 (one per category) and 100000, got {n_listings}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_dir = _prepare_out_dir(out_dir)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    colour_names = sorted(COLOURS)
    n_broken = max(1, n_listings // 200)

    products: list[list[str]] = []
    images: list[list[str]] = []
    image_files: dict[str, bytes] = {}
    expected = {"listings": n_listings, "images": 0, "text_only": 0, "quarantined": {}}
    quarantined: dict[str, int] = {}

    def bump(reason: str, n: int = 1) -> None:
        quarantined[reason] = quarantined.get(reason, 0) + n

    index = 0
    for number in tqdm(range(n_listings), desc="demo listings", disable=not progress, mininterval=1.0):
        spec = CATEGORIES[number % len(CATEGORIES)] if number < len(CATEGORIES) else rng.choice(CATEGORIES)
        sub = rng.choice(sorted(spec.subcategories))
        item = rng.choice(spec.subcategories[sub])
        brand = rng.choice(spec.brands)
        colour = rng.choice(colour_names)
        condition = rng.choice(CONDITIONS)
        town, county = rng.choice(LOCATIONS)
        location = f"{town}, {county}" if county else town
        listing_id = _uuid(rng)
        title = _title(rng, brand, item, colour, condition)
        price = 0.0 if rng.random() < FREE_SHARE else _price(rng, spec)
        price_text = "Free" if price == 0.0 and rng.random() < 0.3 else _format_price(price)
        index += rng.choice((1, 1, 1, 2))
        products.append(
            [
                str(index),
                listing_id,
                f"{title} | in {location} | Gumtree",
                f"{spec.name} / {sub}",
                _description(rng, spec, item, colour, condition),
                price_text,
                location,
            ]
        )
        if rng.random() < TEXT_ONLY_SHARE:
            expected["text_only"] += 1
            continue
        listed = LAST_DAY - datetime.timedelta(days=rng.randrange(60))
        for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))):
            shape = spec.shape if rng.random() >= CONFUSED_SHAPE_SHARE else rng.choice(SHAPES)
            photo = draw_photo(shape, COLOURS[colour], rng, np_rng, rng.choice(PHOTO_SIZES))
            image_id = _uuid(rng)
            created = listed + datetime.timedelta(days=rng.choice((0, 0, 0, 1)))
            images.append([listing_id, image_id, created.strftime("%d/%m/%Y")])
            image_files[image_id] = _jpeg_bytes(photo)
            expected["images"] += 1

    # Deliberately broken rows and files, a few of each kind, interleaved with the good ones.
    good_image_ids = [row[1] for row in images]
    for _ in range(n_broken):
        # A product row with an unparseable price; its photo row becomes 'product_quarantined'.
        bad_id = _uuid(rng)
        index += 1
        products.insert(
            rng.randrange(len(products) + 1),
            [
                str(index),
                bad_id,
                "Mystery item | in London | Gumtree",
                "Other Goods / Other",
                "Price on application",
                rng.choice(["POA", "£ offers", "£12.5O", "ask"]),
                "London",
            ],
        )
        bump("bad_price")
        photo_id = _uuid(rng)
        images.append([bad_id, photo_id, "01/02/2022"])
        image_files[photo_id] = _jpeg_bytes(draw_photo("star", COLOURS["red"], rng, np_rng, (256, 256)))
        bump("product_quarantined")
        # A product row cut short (missing columns).
        index += 1
        short = [str(index), _uuid(rng), "Broken row | in Leeds, West Yorkshire | Gumtree", "Home & Garden"]
        products.insert(rng.randrange(len(products) + 1), short)
        bump("wrong_field_count")
        # A photo row of a product that is not in Products.csv.
        orphan_id = _uuid(rng)
        images.append([_uuid(rng), orphan_id, "03/02/2022"])
        image_files[orphan_id] = _jpeg_bytes(draw_photo("disc", COLOURS["blue"], rng, np_rng, (256, 256)))
        bump("unknown_product")

    # Broken files replace the bytes of some good listings' extra photos (keeping at least one photo
    # per listing would complicate nothing: a listing whose only photo is broken becomes text-only).
    sabotage = rng.sample(good_image_ids, k=min(len(good_image_ids), 4 * n_broken))
    kinds = ("image_corrupt", "image_not_an_image", "image_truncated", "image_decompression_bomb")
    for position, image_id in enumerate(sabotage):
        kind = kinds[position % len(kinds)]
        data = image_files[image_id]
        if kind == "image_corrupt":
            image_files[image_id] = _corrupt_png(data)
        elif kind == "image_not_an_image":
            image_files[image_id] = b"<html><body>404 Not Found</body></html>\n"
        elif kind == "image_truncated":
            image_files[image_id] = data[: len(data) // 2]
        else:
            image_files[image_id] = _bomb_png()
        bump(kind)
        expected["images"] -= 1
    # An image row whose file is missing.
    missing_id = rng.choice([i for i in good_image_ids if i not in set(sabotage)])
    del image_files[missing_id]
    bump("image_file_missing")
    expected["images"] -= 1

    text_only_after = {row[0] for row in images if row[1] in image_files and row[1] not in sabotage}
    expected["text_only"] = sum(
        1
        for row in products
        if len(row) == 7 and row[5] not in ("POA", "£ offers", "£12.5O", "ask") and row[1] not in text_only_after
    )
    expected["quarantined"] = dict(sorted(quarantined.items()))

    rng.shuffle(images)
    image_lines = [_csv_line(IMAGE_HEADER)]
    for number, (product_id, image_id, created) in enumerate(images, start=1):
        image_lines.append(
            _csv_line([number + 1, image_id, product_id, BUCKET + f"{image_id}.jpg", _ref(rng), created])
        )
    product_lines = [_csv_line(PRODUCT_HEADER)] + [_csv_line(row) for row in products]

    for image_id in sorted(image_files):
        _write_atomic(image_dir / f"{image_id}.jpg", image_files[image_id])
    products_csv, images_csv = out_dir / "Products.csv", out_dir / "Images.csv"
    _write_atomic(products_csv, "".join(product_lines).encode("utf-8"))
    _write_atomic(images_csv, "".join(image_lines).encode("utf-8"))
    manifest = {"seed": seed, "n_listings": n_listings, "expected": expected}
    _write_atomic(out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    logger.info("demo export: %d listings, %d image files in %s", n_listings, len(image_files), out_dir)
    return DemoExport(products_csv, images_csv, image_dir)
