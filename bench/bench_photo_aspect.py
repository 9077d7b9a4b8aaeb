"""Aspect ratios of an export's photos, inside any black padding: the data behind the ingest's
``max_aspect_ratio`` (docs/catalog.md).

    .venv/bin/python -m bench.bench_photo_aspect /work/shared/data/marketplace-dev/images

The development export ships its photos as 256 px squares padded with black, so each photo is first
cropped to the box around its pixels brighter than 24 in some channel (``bench_self_photo.trim_padding``);
the ratio is that box's long side over its short side. Prints percentiles and the widest photos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.bench_self_photo import trim_padding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    ratios, names = [], []
    for path in sorted(args.image_dir.glob("*.jpg")):
        with Image.open(path) as image:
            width, height = trim_padding(image).size
        ratios.append(max(width, height) / min(width, height))
        names.append(f"{path.name} {width}x{height}")
    ratios = np.asarray(ratios)
    result = {"photos": len(ratios),
              "percentiles": {str(q): round(float(np.percentile(ratios, q)), 2) for q in (50, 90, 99, 99.9, 100)},
              "widest": [names[i] for i in np.argsort(ratios)[::-1][:5]]}
    print(json.dumps(result, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
