"""What loading a workspace's search state costs: `Searcher.from_workspace` seconds, the resident memory it adds,
and the p50 of one photo query (the photo retriever and `photo_sim` read the photo vectors).

    .venv/bin/python -m bench.bench_searcher_load --workspace /tmp/q6/svc100k

The model bundle is loaded before the clock starts (the service loads its own served model first too). The
memory is the process's VmRSS after the load minus before it: the listing table, the embeddings and the pages of
the mapped indexes that loading touched.
"""

from __future__ import annotations

import argparse
import json
import time


def resident_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--queries", type=int, default=30, help="photo queries (the same photo) for the p50")
    args = parser.parse_args(argv)

    from PIL import Image

    from catalog.store import Catalog
    from core.workspace import Workspace
    from encoders.bundle import MultiModalModel
    from search.pipeline import Searcher

    workspace = Workspace.at(args.workspace)
    model = MultiModalModel.load(workspace.model_dir)
    before = resident_mb()
    started = time.perf_counter()
    searcher = Searcher.from_workspace(workspace, model=model)
    load_s = time.perf_counter() - started
    added = resident_mb() - before
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        listing = next(x for batch in catalog.iter_listings() for x in batch if x.image_ids)
        with Image.open(catalog.image_path(listing.image_ids[0])) as image:
            photo = image.convert("RGB")
    timings = []
    for _ in range(args.queries):
        began = time.perf_counter()
        result = searcher.search(image=photo, k=10)
        timings.append(time.perf_counter() - began)
    results = {
        "workspace": str(workspace.root), "listings": len(searcher.listings), "load_s": round(load_s, 2),
        "resident_mb_added": round(added), "photo_vectors_in_table": searcher.embeddings.photo is not None,
        "photo_query_p50_ms": round(sorted(timings)[len(timings) // 2] * 1000, 1),
        "photo_query_top1": result.hits[0].listing_id if result.hits else None,
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
