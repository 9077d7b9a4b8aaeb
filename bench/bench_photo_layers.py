"""Which frozen MobileNetV2 features make the best photo vector: pooling, layers, whitening (the photo target).

    .venv/bin/python -m bench.bench_photo_layers --workspace workspace/dev
    .venv/bin/python -m bench.bench_photo_layers --workspace workspace/dev --whitening   # also the train photos

The leave-one-out protocol of `marketsearch evaluate`'s image queries (``evaluation.judgments.known_item_image``: a
listing's first photo is the query, the listing is represented by the mean of its other photos), exact search by
the photo vector alone, on the model's validation and test products. Every photo goes once through ImageNet
MobileNetV2 (224 px, the bundled weights, never the model's own tower), keeping the average-pooled output of blocks
13, 16 and 17 beside the final map's, the final map's max and GeM (p = 3) pooling, the final map of the mirrored
photo, and the photo's colour signature (``encoders.appearance``). Each variant is a pooled vector joined to the
colour signature as the photo vector joins them (weight 0.5) and prints the wanted listing's MRR@10 and hit
rate@1 on both splits; choose on validation. ``--whitening`` adds PCA whitening of the final map fitted on the
train products' photos. ``--paired`` compares two variants query by query (paired t-test).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import numpy as np

BLOCKS = (13, 16, 17)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def photo_features(paths: list, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per photo: pooled MobileNetV2 outputs (``avg``, ``max``, ``gem3`` of the final map; ``b13``, ``b16``,
    ``b17``: block averages; ``flip``: the mirrored photo's final average) and the ``colour`` signature."""
    import torch
    from tqdm import tqdm

    from encoders.appearance import colour_signature
    from encoders.backbones import MobileNetV2Trunk, default_image_preprocessing, load_image_weights
    from encoders.pixels import EvalPixels
    from evaluation.protocol import load_photo

    net = MobileNetV2Trunk()
    load_image_weights(net, "mobilenet_v2")
    net.eval()
    pixels = EvalPixels(asdict(default_image_preprocessing("mobilenet_v2")))
    out: dict[str, list] = {name: [] for name in ("avg", "max", "gem3", "flip", "colour", *(f"b{b}" for b in BLOCKS))}
    for start in tqdm(range(0, len(paths), batch_size), desc="photos", unit="batch"):
        images = [load_photo(p) for p in paths[start : start + batch_size]]
        x = torch.as_tensor(np.stack([pixels(image) for image in images]))
        with torch.inference_mode():
            h = x
            for index, block in enumerate(net.net.features):
                h = block(h)
                if index in BLOCKS:
                    out[f"b{index}"].append(h.mean((2, 3)).numpy())
            out["avg"].append(h.mean((2, 3)).numpy())
            out["max"].append(h.amax((2, 3)).numpy())
            out["gem3"].append(h.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3).numpy())
            out["flip"].append(net(torch.flip(x, dims=[3])).mean((2, 3)).numpy())
        out["colour"].extend(colour_signature(image) for image in images)
    return {name: np.asarray(np.concatenate(v) if name != "colour" else np.stack(v), np.float32)
            for name, v in out.items()}


class LeaveOneOut:
    """The image protocol of one split over photo rows: query rows, wanted corpus row, each listing's photo rows."""

    def __init__(self, listings: list, row_of_photo: dict[str, int]):
        from evaluation.judgments import known_item_image, represented_photos

        queries, _ = known_item_image(listings, listings)
        represented = {lid: [row_of_photo[p] for p in photos]
                       for lid, photos in represented_photos(listings, queries).items()}
        ids = [i for i, rows in represented.items() if rows]
        corpus_row = {i: r for r, i in enumerate(ids)}
        self.queries = np.array([row_of_photo[q.image_id] for q in queries.values()])
        self.wanted = np.array([corpus_row[q.target_id] for q in queries.values()])
        self.represented = [represented[i] for i in ids]

    def reciprocal_ranks(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the wanted listing's reciprocal rank within the top 10 (0 below) and its rank."""
        corpus = _unit(np.stack([vectors[rows].sum(0) for rows in self.represented]))
        scores = vectors[self.queries] @ corpus.T
        wanted = scores[np.arange(len(self.queries)), self.wanted]
        ranks = (scores > wanted[:, None]).sum(1) + 1
        return np.where(ranks <= 10, 1.0 / ranks, 0.0), ranks


def whitened(pooled: np.ndarray, fit_rows: list[int], dims: int, shrink: float) -> np.ndarray:
    """PCA whitening of unit ``pooled`` vectors fitted on ``fit_rows``, ``dims`` components, eigenvalues shrunk
    by ``shrink`` times their mean."""
    x = _unit(pooled)
    mean = x[fit_rows].mean(0)
    centred = x[fit_rows] - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / len(fit_rows))
    values, vectors = values[::-1][:dims], vectors[:, ::-1][:, :dims]
    return _unit((x - mean) @ vectors / np.sqrt(values + shrink * values.mean()))


def variants(f: dict[str, np.ndarray], fit_rows: list[int] | None) -> dict[str, np.ndarray | None]:
    """Pooled vectors by name (None: the colour signature alone)."""
    avg = _unit(f["avg"])
    out: dict[str, np.ndarray | None] = {"avg (today's recipe before mid-level features)": avg,
                                         "max": f["max"], "gem3": f["gem3"],
                                         "avg of photo and mirrored photo": f["avg"] + f["flip"]}
    for block in BLOCKS:
        for weight in (0.3, 0.5, 0.7, 1.0):
            out[f"avg + {weight} b{block}"] = np.hstack([avg, weight * _unit(f[f"b{block}"])])
    out["avg + 0.5 b16 + 0.5 b13"] = np.hstack([avg, 0.5 * _unit(f["b16"]), 0.5 * _unit(f["b13"])])
    from encoders.backbones import MID_FEATURE_SCALE

    out[f"avg + {MID_FEATURE_SCALE:g} x raw b16 (the trunk's mid_block recipe)"] = np.hstack(
        [f["avg"], MID_FEATURE_SCALE * f["b16"]])
    if fit_rows is not None:
        for dims in (256, 512, 1024):
            out[f"whitened avg, {dims} dims"] = whitened(f["avg"], fit_rows, dims, 1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--whitening", action="store_true", help="Also encode the train photos and fit whitening.")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"), default=None,
                        help="Two variant names to compare query by query.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    from scipy import stats

    from core.workspace import Workspace
    from encoders.appearance import appearance_vectors
    from evaluation.protocol import ProtocolBuilder

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    builder = ProtocolBuilder(Workspace.at(args.workspace), progress=False)
    try:
        splits = {s: builder.listings((s,)) for s in ("val", "test") + (("train",) if args.whitening else ())}
        photos = sorted({p for listings in splits.values() for x in listings for p in x.image_ids})
        paths = [builder._photo_path(p) for p in photos]
    finally:
        builder.close()
    row_of_photo = {p: r for r, p in enumerate(photos)}
    features = photo_features(paths)
    encoded = time.perf_counter() - started
    protocols = {s: LeaveOneOut(splits[s], row_of_photo) for s in ("val", "test")}
    fit_rows = [row_of_photo[p] for x in splits.get("train", []) for p in x.image_ids] or None
    results, per_query = {}, {}
    for name, pooled in variants(features, fit_rows).items():
        for colour_weight in (0.0, 0.5):
            label = f"{name}, colour {colour_weight:g}"
            vectors = (appearance_vectors(pooled, features["colour"], colour_weight) if colour_weight
                       else _unit(pooled))
            row = {}
            for split, protocol in protocols.items():
                rr, ranks = protocol.reciprocal_ranks(vectors)
                per_query[(label, split)] = rr
                row[split] = {"queries": len(rr), "mrr@10": round(float(rr.mean()), 4),
                              "hit_rate@1": round(float((ranks == 1).mean()), 4)}
            results[label] = row
            print(f"{label:70s} val {row['val']['mrr@10']:.4f} / {row['val']['hit_rate@1']:.4f}   "
                  f"test {row['test']['mrr@10']:.4f} / {row['test']['hit_rate@1']:.4f}", flush=True)
    print(f"{len(photos)} photos encoded in {encoded:.0f} s; val {len(protocols['val'].queries)} queries, test "
          f"{len(protocols['test'].queries)}")
    if args.paired:
        for split in ("val", "test"):
            a, b = per_query[(args.paired[0], split)], per_query[(args.paired[1], split)]
            print(f"{split}: {args.paired[1]!r} - {args.paired[0]!r} = {b.mean() - a.mean():+.4f}, better on "
                  f"{int((b > a).sum())}, worse on {int((b < a).sum())}, p = {stats.ttest_rel(b, a).pvalue:.2g}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
