"""Self-photo search through the served pipeline: does a listing's own catalogue photo find that listing first?

    .venv/bin/python -m bench.bench_self_photo --workspace workspace/demo

For every catalogue listing with a photo, its first photo (as stored, or with ``--near-duplicate`` a
seeded light transform of it: crop, resize, brightness, JPEG; or with ``--trim-padding`` without the
black bands that pad it to a square, as the seller's own photo was before padding) is searched over
the whole catalogue with
``Searcher.search`` (the service's code path, the workspace's installed re-ranker), with and without
re-ranking. Prints, per stage, the share of queries whose top hit is the listing itself and the mean
reciprocal rank of the listing in the top 10; ``--json`` writes them. Also where the misses come from:
the share of queries whose listing is among the re-ranker's candidates at all, and the share whose
listing is the nearest over the whole catalogue by the photo vectors (raw backbone + colour) (what a photo
candidate source would put first), for all queries and for the re-ranked misses.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def trim_padding(image, darkest: int = 24):
    """The photo cropped to the box around its pixels brighter than ``darkest`` (all channels): without the
    black bands that padded it to a square. Unchanged when nothing is that bright."""
    box = image.convert("RGB").point(lambda v: 255 if v > darkest else 0).convert("L").getbbox()
    return image.crop(box) if box else image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--near-duplicate", action="store_true", help="Search a lightly transformed copy.")
    parser.add_argument("--trim-padding", action="store_true",
                        help="Search the photo without its black padding (its original shape).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="Query a seeded sample of this many listings (the corpus stays the whole catalogue).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    import torch

    from catalog.store import Catalog
    from core.workspace import Workspace
    from encoders.embed import load_embeddings, model_photo_dim
    from evaluation.protocol import load_photo, near_duplicate, query_rng
    from search.pipeline import Searcher

    torch.set_num_threads(args.threads)
    workspace = Workspace.at(args.workspace)
    searcher = Searcher.from_workspace(workspace)
    if searcher.ranker is None:
        raise SystemExit(f"no re-ranker in {workspace.ranker_dir}; run `marketsearch train-ranker` first")
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        listings = [x for batch in catalog.iter_listings() for x in batch if x.image_ids]
        paths = {x.id: catalog.image_path(x.image_ids[0]) for x in listings}
    if args.limit is not None and args.limit < len(listings):
        chosen = np.random.default_rng(args.seed).choice(len(listings), size=args.limit, replace=False)
        listings = [listings[i] for i in sorted(chosen)]
    positions: dict[str, list[int]] = {"first stage": [], "reranked": []}
    in_candidates, photo_nearest = [], []
    with Catalog(workspace.db_url, root=workspace.root) as catalog:  # the service reads them from its photo index
        table = load_embeddings(catalog, searcher.model.fingerprint, photo_dim=model_photo_dim(searcher.model))
    photos = None if table.photo is None else np.where(table.has_photo[:, None], table.photo.astype(np.float32), -1)
    for listing in listings:
        image = load_photo(paths[listing.id])
        if args.near_duplicate:
            image = near_duplicate(image, query_rng(args.seed, f"self-photo-{listing.id}"))
        if args.trim_padding:
            image = trim_padding(image)
        for stage, rerank in (("first stage", False), ("reranked", True)):
            hits = [hit.listing_id for hit in searcher.search(image=image, k=10, rerank=rerank).hits]
            positions[stage].append(hits.index(listing.id) + 1 if listing.id in hits else 0)
        query = searcher.query_context(image=image)
        in_candidates.append(listing.id in set(searcher.candidates(query).listing_ids))
        if photos is not None:
            photo_nearest.append(table.ids[int(np.argmax(photos @ query.photo_vector.astype(np.float32)))]
                                 == listing.id)
    result = {"queries": len(listings), "near_duplicate": args.near_duplicate, "trim_padding": args.trim_padding,
              "stages": {}}
    for stage, found in positions.items():
        found = np.asarray(found)
        result["stages"][stage] = {"found_first": float((found == 1).mean()),
                                   "mrr@10": float(np.where(found > 0, 1.0 / np.maximum(found, 1), 0.0).mean())}
        print(f"{stage:12s} {len(found)} queries: own listing first {result['stages'][stage]['found_first']:.3f}, "
              f"MRR@10 {result['stages'][stage]['mrr@10']:.3f}")
    missed = np.asarray(positions["reranked"]) != 1
    in_candidates, photo_nearest = np.asarray(in_candidates), np.asarray(photo_nearest, bool)
    result["in_candidates"] = float(in_candidates.mean())
    result["missed"] = int(missed.sum())
    result["missed_in_candidates"] = int(in_candidates[missed].sum())
    if len(photo_nearest):
        result["photo_nearest"] = float(photo_nearest.mean())
        result["missed_photo_nearest"] = int(photo_nearest[missed].sum())
        result["missed_photo_nearest_not_in_candidates"] = int((photo_nearest & ~in_candidates)[missed].sum())
    print(f"own listing among the candidates: {result['in_candidates']:.4f}; nearest by photo vector over the "
          f"catalogue: {result.get('photo_nearest', float('nan')):.4f}; re-ranked misses {result['missed']}: "
          f"{result['missed_in_candidates']} among the candidates, {result.get('missed_photo_nearest', 0)} nearest "
          f"by photo vector ({result.get('missed_photo_nearest_not_in_candidates', 0)} of them not candidates)")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
