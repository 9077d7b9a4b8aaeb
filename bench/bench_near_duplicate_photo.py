"""Where photo_sim puts a near-duplicate of a listing's own photo against the other listings: for choosing
``ranking.features.NEAR_DUPLICATE_PHOTO_SIM``.

    .venv/bin/python -m bench.bench_near_duplicate_photo --workspace workspace/demo --limit 400

For a seeded sample of listings with a photo, the query is ``evaluation.protocol.near_duplicate`` of the listing's
first photo (crop, resize, brightness, JPEG; seeded per listing as the self-photo training queries are), encoded
through the served query path (``Searcher.query_context``). Against the stored listing photo vectors it prints the
quantiles of the cosine to the listing itself and to the closest other listing, and for a range of thresholds the
share of queries whose own listing reaches it and the share whose closest other listing does, for the photo vectors
as stored (raw backbone + colour, ``encoders.appearance``) and for their two parts alone (the backbone part is the
photo vector of set 4 exactly, the normalised mean of the unit pooled vectors: with mid-level features,
the final map and block 16 together).
"""

from __future__ import annotations

import argparse

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from catalog.store import Catalog
    from core.workspace import Workspace
    from encoders.appearance import COLOUR_DIM
    from encoders.embed import load_embeddings, model_photo_dim
    from evaluation.protocol import load_photo, near_duplicate, query_rng
    from search.pipeline import Searcher

    workspace = Workspace.at(args.workspace)
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:  # the service reads them from its photo index
        table = load_embeddings(catalog, searcher.model.fingerprint, photo_dim=model_photo_dim(searcher.model))
    if table.photo is None:
        raise SystemExit("no photo vectors of this recipe stored: run `marketsearch embed` first")
    photo = table.photo.astype(np.float32)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        listings = [x for batch in catalog.iter_listings() for x in batch if x.image_ids and x.id in table.row_of]
        rng = np.random.default_rng(args.seed)
        chosen = rng.choice(len(listings), size=min(args.limit, len(listings)), replace=False)
        queries = []
        for i in sorted(chosen):
            listing = listings[i]
            path = catalog.image_path(listing.image_ids[0])
            image = near_duplicate(load_photo(path), query_rng(args.seed, listing.id))
            queries.append((table.row_of[listing.id], searcher.query_context(image=image).photo_vector))
    rows = np.array([row for row, _ in queries])
    q = np.stack([vector for _, vector in queries]).astype(np.float32)
    p = photo.shape[1] - COLOUR_DIM
    parts = {
        "stored (backbone + colour)": (q, photo),
        "backbone part (the pooled vector alone)": (_unit(q[:, :p]), _unit(photo[:, :p])),
        "colour part": (_unit(q[:, p:]), _unit(photo[:, p:])),
    }
    print(f"{len(q)} near-duplicate queries over {len(photo)} listings")
    for name, (queries_part, corpus_part) in parts.items():
        sims = queries_part @ corpus_part.T
        own = sims[np.arange(len(rows)), rows]
        sims[np.arange(len(rows)), rows] = -np.inf
        other = sims.max(axis=1)
        print(f"\n{name}: own listing first {np.mean(own > other):.3f}")
        print("  quantiles " + " ".join(f"{x:>6}" for x in QUANTILES))
        print("  own       " + " ".join(f"{v:6.3f}" for v in np.quantile(own, QUANTILES)))
        print("  best other" + " ".join(f"{v:6.3f}" for v in np.quantile(other, QUANTILES)))
        for threshold in np.arange(0.80, 0.991, 0.01):
            reached = np.mean(own >= threshold), np.mean(other >= threshold)
            print(f"  >= {threshold:.2f}: own {reached[0]:.3f}  best other {reached[1]:.3f}")


if __name__ == "__main__":
    main()
