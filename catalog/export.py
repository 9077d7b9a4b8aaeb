"""Reading the marketplace's raw export (Products.csv, Images.csv, images/) exactly as it comes.

The real Products.csv ends rows with LF but has bare CR characters inside unquoted fields. Python's csv
module (and pandas' default parser) treat a bare CR as a row end, which splits those rows; so CRs are
swapped for a private-use character before parsing and restored in each field afterwards.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from catalog.models import Listing
from catalog.parsing import (
    FieldError,
    format_category_path,
    normalise_text,
    parse_category_path,
    parse_export_date,
    parse_location,
    parse_price,
    strip_title_suffix,
)
from catalog.quarantine import QuarantineRecord

logger = logging.getLogger(__name__)

PRODUCT_COLUMNS = ("id", "product_name", "category", "product_description", "price", "location")
IMAGE_COLUMNS = ("id", "product_id", "bucket_link", "image_ref", "create_time")
INDEX_COLUMN_NAMES = ("", "Unnamed: 0")
_CR_STANDIN = "\ue000"
# Image ids become file names (<image_id>.jpg), so they must not contain path separators.
_SAFE_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportFormatError(ValueError):
    """The export file as a whole is unusable (missing, not UTF-8, wrong columns): ingest stops."""


@dataclass(frozen=True)
class RawRow:
    """One CSV record: the line it starts on and its values by column name."""

    line: int
    values: dict[str, str]


@dataclass(frozen=True)
class ImageRecord:
    """One well-formed Images.csv row whose product is known; the file is checked later."""

    id: str
    listing_id: str
    created_at: datetime.date | None
    source_path: Path
    line: int
    raw: dict


@dataclass
class ParsedExport:
    """Everything read from an export, before the image files are verified."""

    listings: list[Listing]
    images: list[ImageRecord]
    quarantine: list[QuarantineRecord]
    product_rows: int
    image_rows: int
    products_without_image_rows: list[str] = field(default_factory=list)
    unreferenced_files: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


def read_raw_csv(
    path: str | os.PathLike, required: tuple[str, ...], source: str
) -> tuple[list[RawRow], list[QuarantineRecord]]:
    """Rows of an export CSV as dicts, and the rows that have the wrong number of fields.

    Raises ExportFormatError when the file is missing, not UTF-8 or lacks a required column."""
    path = Path(path)
    if not path.is_file():
        raise ExportFormatError(f"{source} file not found: {path}. Pass the export's CSV with the right option.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExportFormatError(
            f"{path} is not UTF-8 (byte {exc.start}: {exc.object[exc.start : exc.start + 8]!r}); re-export it as UTF-8"
        ) from None
    if _CR_STANDIN in text:
        raise ExportFormatError(f"{path} contains U+E000, which the reader reserves; remove it and retry")
    # LF ends a row; CRLF line ends are normalised, bare CRs inside fields are protected from the csv module.
    text = text.replace("\r\n", "\n").replace("\r", _CR_STANDIN)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ExportFormatError(f"{path} is empty; expected a header with columns {list(required)}") from None
    header = [h.replace(_CR_STANDIN, "").strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ExportFormatError(
            f"{path} is missing column(s) {missing}; found {header}. Expected {source} columns "
            f"{list(required)} (plus the unnamed index column)."
        )
    rows: list[RawRow] = []
    bad: list[QuarantineRecord] = []
    line = reader.line_num + 1
    for fields in reader:
        start, line = line, reader.line_num + 1
        fields = [f.replace(_CR_STANDIN, "\r") for f in fields]
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line is not a record
        if len(fields) != len(header):
            record_id = fields[header.index("id")] if len(fields) > header.index("id") else ""
            bad.append(
                QuarantineRecord(
                    source,
                    start,
                    record_id,
                    "wrong_field_count",
                    f"{len(fields)} fields, header has {len(header)}",
                    raw=fields,
                )
            )
            continue
        rows.append(RawRow(start, dict(zip(header, fields))))
    return rows, bad


def parse_product_row(values: dict[str, str]) -> Listing:
    """One Products.csv row -> Listing (no images yet). Raises FieldError subclasses."""
    listing_id = normalise_text(values["id"])
    if not listing_id:
        raise _MissingId("empty id")
    return Listing(id=listing_id, created_at=None, image_ids=(), **clean_product_fields(values))


def clean_product_fields(values: Mapping[str, str]) -> dict[str, object]:
    """The cleaned `Listing` fields of the product columns present in ``values`` (`PRODUCT_COLUMNS` but the id).

    The one definition of the cleaning rules: ingest passes whole rows, the API's listing writes
    (catalog/listing_writes.py) the fields a seller sent. Raises the `FieldError` subclass of the first bad
    field, with ``column`` set to that field's column name."""
    cleaned: dict[str, object] = {}
    for column, clean in _FIELD_CLEANERS:
        if column in values:
            try:
                cleaned.update(clean(values[column]))
            except FieldError as exc:
                exc.column = column
                raise
    return cleaned


def _category_fields(raw: str) -> dict[str, object]:
    levels = parse_category_path(raw)
    return {"category": format_category_path(levels), "category_levels": levels, "top_category": levels[0]}


def _location_fields(raw: str) -> dict[str, object]:
    town, county = parse_location(raw)
    return {"town": town, "county": county, "location": normalise_text(raw)}


# In the order ingest has always checked them: a row with several bad fields is quarantined for the first.
_FIELD_CLEANERS = (
    ("category", _category_fields),
    ("location", _location_fields),
    ("product_name", lambda raw: {"title": strip_title_suffix(raw)}),
    ("product_description", lambda raw: {"description": normalise_text(raw)}),
    ("price", lambda raw: {"price": parse_price(raw)}),
)


class _MissingId(FieldError):
    reason = "missing_id"


def read_products(path: str | os.PathLike) -> tuple[list[Listing], list[QuarantineRecord], int]:
    """Clean listings, quarantined rows and the number of data rows in the file."""
    rows, quarantine = read_raw_csv(path, PRODUCT_COLUMNS, "products")
    listings: list[Listing] = []
    seen: set[str] = set()
    for row in rows:
        record_id = row.values.get("id", "").strip()
        try:
            listing = parse_product_row(row.values)
        except FieldError as exc:
            quarantine.append(QuarantineRecord("products", row.line, record_id, exc.reason, str(exc), row.values))
            continue
        if listing.id in seen:
            quarantine.append(
                QuarantineRecord("products", row.line, listing.id, "duplicate_id", "first row kept", row.values)
            )
            continue
        seen.add(listing.id)
        listings.append(listing)
    return listings, quarantine, len(rows) + sum(1 for q in quarantine if q.reason == "wrong_field_count")


def read_export(
    products_csv: str | os.PathLike, images_csv: str | os.PathLike, image_dir: str | os.PathLike
) -> ParsedExport:
    """Read and clean both CSVs; image rows are matched to products, image files are not opened yet.

    Listings get `created_at` = the earliest create_time of their image rows and `image_ids` = all their
    well-formed image rows (ingest later drops the ids whose files are quarantined)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ExportFormatError(f"image folder not found: {image_dir}. Pass the folder holding <image_id>.jpg.")
    listings, quarantine, product_rows = read_products(products_csv)
    known = {x.id for x in listings}
    rejected_products = {q.record_id for q in quarantine if q.record_id} - known

    rows, image_bad = read_raw_csv(images_csv, IMAGE_COLUMNS, "images")
    quarantine.extend(image_bad)
    image_rows = len(rows) + len(image_bad)
    images: list[ImageRecord] = []
    seen: set[str] = set()
    warnings: dict[str, int] = defaultdict(int)
    for row in rows:
        image_id = normalise_text(row.values["id"])
        product_id = normalise_text(row.values["product_id"])
        if not image_id or not product_id:
            quarantine.append(
                QuarantineRecord("images", row.line, image_id, "missing_id", "empty id or product_id", row.values)
            )
            continue
        if not _SAFE_IMAGE_ID.match(image_id):
            quarantine.append(
                QuarantineRecord(
                    "images", row.line, image_id, "invalid_id", "image ids must be [A-Za-z0-9_.-]", row.values
                )
            )
            continue
        if image_id in seen:
            quarantine.append(
                QuarantineRecord("images", row.line, image_id, "duplicate_id", "first row kept", row.values)
            )
            continue
        seen.add(image_id)
        if product_id not in known:
            reason = "product_quarantined" if product_id in rejected_products else "unknown_product"
            quarantine.append(
                QuarantineRecord("images", row.line, image_id, reason, f"product_id {product_id}", row.values)
            )
            continue
        try:
            created = parse_export_date(row.values["create_time"])
        except FieldError as exc:
            logger.warning("image %s (line %d): %s; created_at left empty", image_id, row.line, exc)
            warnings["image_bad_create_time"] += 1
            created = None
        images.append(ImageRecord(image_id, product_id, created, image_dir / f"{image_id}.jpg", row.line, row.values))

    by_listing: dict[str, list[ImageRecord]] = defaultdict(list)
    for image in images:
        by_listing[image.listing_id].append(image)
    completed: list[Listing] = []
    without: list[str] = []
    for listing in listings:
        own = by_listing.get(listing.id, [])
        if not own:
            without.append(listing.id)
        dates = [i.created_at for i in own if i.created_at is not None]
        completed.append(
            dataclasses.replace(listing, image_ids=tuple(i.id for i in own), created_at=min(dates) if dates else None)
        )

    referenced = {i.id for i in images} | seen
    unreferenced = sorted(
        entry.name
        for entry in os.scandir(image_dir)
        if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).stem not in referenced
    )
    for name in unreferenced:
        quarantine.append(QuarantineRecord("image_file", None, Path(name).stem, "image_file_unreferenced", name, None))
    return ParsedExport(
        listings=completed,
        images=images,
        quarantine=quarantine,
        product_rows=product_rows,
        image_rows=image_rows,
        products_without_image_rows=without,
        unreferenced_files=unreferenced,
        warnings=dict(warnings),
    )
