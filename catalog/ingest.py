"""Ingest a raw marketplace export into a workspace: clean rows, verify photos, upsert, report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from catalog.export import ImageRecord, read_export
from catalog.images import CleanedImage, ImageCleaningConfig, ImageRejected, clean_image, save_config
from catalog.labels import LabelEncoder
from catalog.models import Listing
from catalog.quarantine import (
    QuarantineRecord,
    count_by_reason,
    count_by_source,
    write_quarantine_report,
    write_text_only_report,
)
from catalog.store import Catalog
from core.workspace import Workspace

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest did. Every product row is either loaded or quarantined, and so is every image row:
    `unexplained_product_drops` and `unexplained_image_drops` are always 0 unless there is a bug."""

    product_rows: int
    listings_loaded: int
    image_rows: int
    images_loaded: int
    images_cleaned: int
    images_cached: int
    per_category: dict[str, int]
    text_only: int
    products_without_image_rows: int
    quarantined: dict[str, int]
    quarantined_by_source: dict[str, int]
    quarantine_path: Path
    text_only_path: Path
    labels_path: Path
    new_classes: list[str]
    db_url: str
    catalog_listings: int
    catalog_images: int
    warnings: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def unexplained_product_drops(self) -> int:
        return self.product_rows - self.listings_loaded - self.quarantined_by_source.get("products", 0)

    @property
    def unexplained_image_drops(self) -> int:
        return self.image_rows - self.images_loaded - self.quarantined_by_source.get("images", 0)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["quarantine_path"] = str(self.quarantine_path)
        data["text_only_path"] = str(self.text_only_path)
        data["labels_path"] = str(self.labels_path)
        data["unexplained_product_drops"] = self.unexplained_product_drops
        data["unexplained_image_drops"] = self.unexplained_image_drops
        return data

    def summary_lines(self) -> list[str]:
        lines = [
            f"product rows read:   {self.product_rows}",
            f"listings loaded:     {self.listings_loaded} ({self.text_only} text-only: "
            f"{self.products_without_image_rows} without image rows, "
            f"{self.text_only - self.products_without_image_rows} whose photos were all quarantined)",
            f"image rows read:     {self.image_rows}",
            f"images loaded:       {self.images_loaded} ({self.images_cleaned} cleaned, {self.images_cached} cached)",
            f"catalogue now holds: {self.catalog_listings} listings, {self.catalog_images} images",
            "per category:",
            *(f"  {name:<36} {count}" for name, count in self.per_category.items()),
        ]
        total = sum(self.quarantined.values())
        lines.append(f"quarantined:         {total}")
        lines.extend(f"  {reason:<36} {count}" for reason, count in self.quarantined.items())
        if self.warnings:
            lines.append("warnings: " + ", ".join(f"{k}={v}" for k, v in self.warnings.items()))
        if self.new_classes:
            lines.append(f"new classes added to {self.labels_path}: {self.new_classes}")
        lines.append(f"quarantine report:   {self.quarantine_path}")
        lines.append(f"text-only listings:  {self.text_only_path}")
        drops = self.unexplained_product_drops + self.unexplained_image_drops
        lines.append(f"unexplained drops:   {drops}")
        lines.append(f"took {self.elapsed_s:.1f}s")
        return lines


def _clean_all(
    records: list[ImageRecord],
    out_dir: Path,
    config: ImageCleaningConfig,
    progress: bool,
) -> tuple[dict[str, CleanedImage], list[QuarantineRecord]]:
    cleaned: dict[str, CleanedImage] = {}
    rejected: list[QuarantineRecord] = []
    for record in tqdm(records, desc="images", unit="img", disable=not progress, mininterval=1.0):
        try:
            cleaned[record.id] = clean_image(record.source_path, out_dir / f"{record.id}.jpg", config)
        except ImageRejected as exc:
            rejected.append(QuarantineRecord("images", record.line, record.id, exc.reason, exc.detail, record.raw))
    return cleaned, rejected


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def ingest_export(
    products_csv: str | os.PathLike,
    images_csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    workspace: Workspace | str | os.PathLike,
    image_size: int = 256,
    *,
    db_url: str | None = None,
    batch_size: int = 500,
    image_config: ImageCleaningConfig | None = None,
    progress: bool = True,
) -> IngestReport:
    """Ingest an export into `workspace` (database, cleaned images, labels, quarantine report).

    Idempotent: listings and images are upserted by id, photos already cleaned with the same settings
    are skipped. Each batch of listings is written with its images in one transaction, and image files
    are written atomically, so an interrupted run leaves a consistent catalogue that a re-run completes.
    Raises ExportFormatError (a ValueError) for a missing file or wrong columns."""
    started = time.perf_counter()
    if not isinstance(workspace, Workspace):
        workspace = Workspace.at(workspace)
    workspace.ensure()
    config = image_config or ImageCleaningConfig(size=image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    export = read_export(products_csv, images_csv, image_dir)
    logger.info(
        "read %d product rows (%d usable), %d image rows (%d usable)",
        export.product_rows,
        len(export.listings),
        export.image_rows,
        len(export.images),
    )
    catalog = Catalog(db_url or workspace.db_url, root=workspace.root)
    try:
        cleaned, rejected = _clean_all(export.images, workspace.images_dir, config, progress)
        save_config(config, workspace.photo_config_path)
        quarantine = export.quarantine + rejected
        images_by_id = {r.id: r for r in export.images}
        listings: list[Listing] = [
            dataclasses.replace(x, image_ids=tuple(i for i in x.image_ids if i in cleaned)) for x in export.listings
        ]
        for start in tqdm(range(0, len(listings), batch_size), desc="database", unit="batch", disable=not progress):
            batch = listings[start : start + batch_size]
            rows = []
            for listing in batch:
                for image_id in listing.image_ids:
                    result, record = cleaned[image_id], images_by_id[image_id]
                    rows.append(
                        {
                            "id": image_id,
                            "listing_id": listing.id,
                            "path": _relative(workspace.images_dir / f"{image_id}.jpg", catalog.root),
                            "width": result.width,
                            "height": result.height,
                            "created_at": record.created_at,
                            "source_key": result.source_key,
                            "source_width": result.source_width,
                            "source_height": result.source_height,
                        }
                    )
            catalog.write_batch(batch, rows)
        stats = catalog.stats()
    finally:
        catalog.close()

    labels = LabelEncoder.from_json(workspace.labels_path) if workspace.labels_path.is_file() else LabelEncoder()
    before = set(labels.classes)
    labels.extend(sorted({x.top_category for x in listings} - before))
    new_classes = [c for c in labels.classes if c not in before]
    labels.to_json(workspace.labels_path)

    quarantine_path = write_quarantine_report(quarantine, workspace.quarantine_dir)
    no_rows = set(export.products_without_image_rows)
    text_only_path = write_text_only_report(
        (
            (x.id, x.title, "no image rows" if x.id in no_rows else "all photos quarantined")
            for x in listings
            if not x.image_ids
        ),
        workspace.quarantine_dir,
    )
    report = IngestReport(
        product_rows=export.product_rows,
        listings_loaded=len(listings),
        image_rows=export.image_rows,
        images_loaded=len(cleaned),
        images_cleaned=sum(1 for c in cleaned.values() if not c.cached),
        images_cached=sum(1 for c in cleaned.values() if c.cached),
        per_category=dict(sorted(Counter(x.top_category for x in listings).items())),
        text_only=sum(1 for x in listings if not x.image_ids),
        products_without_image_rows=len(export.products_without_image_rows),
        quarantined=count_by_reason(quarantine),
        quarantined_by_source=count_by_source(quarantine),
        quarantine_path=quarantine_path,
        text_only_path=text_only_path,
        labels_path=workspace.labels_path,
        new_classes=new_classes,
        db_url=catalog.url,
        catalog_listings=stats["listings"],
        catalog_images=stats["images"],
        warnings=export.warnings,
        elapsed_s=time.perf_counter() - started,
    )
    if report.unexplained_product_drops or report.unexplained_image_drops:
        logger.error(
            "unexplained drops: %d products, %d images (this is a bug)",
            report.unexplained_product_drops,
            report.unexplained_image_drops,
        )
    logger.info(
        "ingest done: %d listings, %d images, %d quarantined in %.1fs",
        report.listings_loaded,
        report.images_loaded,
        sum(report.quarantined.values()),
        report.elapsed_s,
    )
    return report
