"""Ingest a raw export folder into a fresh workspace and print the counts, time and peak memory.

    .venv/bin/python -m bench.bench_ingest /work/shared/data/marketplace-dev [--workspace DIR] [--rerun]

Run it under `/usr/bin/time -v` for the wall time and peak RSS reported in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

from catalog.export import PRODUCT_COLUMNS, read_raw_csv
from catalog.ingest import ingest_export
from catalog.quarantine import read_quarantine_report
from core.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path, help="folder with Products.csv, Images.csv and images/")
    parser.add_argument("--workspace", type=Path, help="fresh workspace folder (default: a temp dir, removed)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rerun", action="store_true", help="ingest a second time to time the cached re-run")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.workspace is not None and args.workspace.exists() and any(args.workspace.iterdir()):
        parser.error(f"--workspace {args.workspace} is not empty; the benchmark needs a fresh one")
    root = args.workspace or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    workspace = Workspace.at(root).ensure()
    export = args.export_dir
    try:
        started = time.perf_counter()
        report = ingest_export(
            export / "Products.csv", export / "Images.csv", export / "images", workspace, args.image_size
        )
        first_s = time.perf_counter() - started
        rerun_s = None
        if args.rerun:
            started = time.perf_counter()
            again = ingest_export(
                export / "Products.csv", export / "Images.csv", export / "images", workspace, args.image_size
            )
            rerun_s = time.perf_counter() - started
            if again.images_cached != again.images_loaded or again.listings_loaded != report.listings_loaded:
                raise SystemExit(f"re-run was not idempotent: {again.to_dict()}")
        quarantine = read_quarantine_report(report.quarantine_path)
        raw_rows, _ = read_raw_csv(export / "Products.csv", PRODUCT_COLUMNS, "products")
        rows_with_cr = sum(any("\r" in v for v in row.values.values()) for row in raw_rows)
        figures = {
            "export": str(export),
            "product_rows": report.product_rows,
            "product_rows_with_bare_cr": rows_with_cr,
            "listings_loaded": report.listings_loaded,
            "text_only_listings": report.text_only,
            "image_rows": report.image_rows,
            "images_loaded": report.images_loaded,
            "categories": len(report.per_category),
            "per_category": report.per_category,
            "quarantined": report.quarantined,
            "quarantine_records": len(quarantine),
            "unexplained_product_drops": report.unexplained_product_drops,
            "unexplained_image_drops": report.unexplained_image_drops,
            "warnings": report.warnings,
            "ingest_s": round(first_s, 2),
            "cached_rerun_s": None if rerun_s is None else round(rerun_s, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if args.workspace is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
