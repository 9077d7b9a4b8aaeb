"""The quarantine report: every rejected row or image file with its original values and a reason."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.files import write_atomic

# Every reason code ingest can emit, with what it means (shown in docs and the CLI summary).
REASONS: dict[str, str] = {
    "wrong_field_count": "the CSV row has a different number of fields than the header",
    "missing_id": "the row has an empty id (or product_id)",
    "invalid_id": "the image id has characters that cannot be part of a file name (path separators...)",
    "duplicate_id": "the id already appeared earlier in the file; the first row was kept",
    "bad_price": "the price is not a GBP amount ('£1,250.00') or 'Free'",
    "bad_category": "the category path is empty or has an empty level",
    "missing_title": "the product title is empty once the ' | in Town | Gumtree' suffix is removed",
    "unknown_product": "the image row names a product id that is not in Products.csv",
    "product_quarantined": "the image row belongs to a product row that was itself quarantined",
    "image_file_missing": "no <image_id>.jpg for this image row in the image folder",
    "image_empty_file": "the image file is empty (0 bytes)",
    "image_not_an_image": "the file is not an image Pillow can identify",
    "image_corrupt": "the image fails verification or decoding",
    "image_truncated": "the image file ends before its data does",
    "image_decompression_bomb": "the image declares more pixels than allowed (decompression-bomb guard)",
    "image_too_small": "the image is smaller than the minimum side length",
    "image_aspect_ratio": "the image is wider (or taller) than the aspect-ratio limit, e.g. thousands of pixels by one",
    "image_file_unreferenced": "a file in the image folder that no Images.csv row names",
}

COLUMNS = ("source", "line", "record_id", "reason", "detail", "raw")


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected input. `source` is 'products', 'images' or 'image_file'; `line` is the 1-based line
    where the row starts in its CSV (None for files); `raw` holds the original values."""

    source: str
    line: int | None
    record_id: str
    reason: str
    detail: str
    raw: dict | list | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}; known: {sorted(REASONS)}")


def count_by_reason(records: Iterable[QuarantineRecord]) -> dict[str, int]:
    """reason -> count, most frequent first (ties by name)."""
    counts = Counter(r.reason for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_by_source(records: Iterable[QuarantineRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.source for r in records).items()))


def _render(records: Iterable[QuarantineRecord]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in records:
        raw = json.dumps(r.raw, ensure_ascii=False) if r.raw is not None else ""
        writer.writerow([r.source, "" if r.line is None else r.line, r.record_id, r.reason, r.detail, raw])
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def write_quarantine_report(
    records: Iterable[QuarantineRecord], quarantine_dir: str | os.PathLike, *, timestamp: str | None = None
) -> Path:
    """Write `quarantine-<timestamp>.csv` and refresh `latest.csv` (both atomically); return the former.

    Written even when nothing was rejected, so `latest.csv` always describes the latest run."""
    quarantine_dir = Path(quarantine_dir)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = timestamp or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    text = _render(records)
    path = quarantine_dir / f"quarantine-{stamp}.csv"
    _write_atomic(path, text)
    _write_atomic(quarantine_dir / "latest.csv", text)
    return path


def read_quarantine_report(path: str | os.PathLike) -> list[QuarantineRecord]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [
            QuarantineRecord(
                source=row["source"],
                line=int(row["line"]) if row["line"] else None,
                record_id=row["record_id"],
                reason=row["reason"],
                detail=row["detail"],
                raw=json.loads(row["raw"]) if row["raw"] else None,
            )
            for row in reader
        ]


def write_text_only_report(rows: Iterable[tuple[str, str, str]], quarantine_dir: str | os.PathLike) -> Path:
    """`text-only.csv`: listings kept without a photo (id, title, why), so they are reported, not hidden."""
    quarantine_dir = Path(quarantine_dir)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("listing_id", "title", "why"))
    writer.writerows(rows)
    path = quarantine_dir / "text-only.csv"
    _write_atomic(path, buffer.getvalue())
    return path
