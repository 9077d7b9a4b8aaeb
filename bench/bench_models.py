"""Benchmark of the towers and the fusion classifier on an ingested workspace (e.g. the real dev export).

Measures, on the test products of the product-level split:
- the default training profile (frozen backbones, cached features, heads trained): wall time,
  per-tower and fused accuracy / macro-F1, title -> photo-only recall@10 over the whole catalogue;
- a logistic-regression baseline on the same frozen backbone features (text, image, concatenated);
- catalogue embedding throughput (listings/s, photos/s) with the batch sizes and thread count used.

    .venv/bin/python -m bench.bench_models --workspace workspace/dev --threads 2 --fresh-cache \
        --json bench/results/models.json

--run DIR reuses a finished training run instead of training again (its timing comes from its report).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def logistic_baseline(workspace, run_dir: Path) -> dict:
    """Standardised features + sklearn LogisticRegression, trained on the run's train split."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from catalog.labels import LabelEncoder
    from encoders.train import CachedFeatures, TrainConfig, _build, load_workspace_training_data
    from fusion.evaluate import classification_metrics

    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    labels = LabelEncoder.from_json(workspace.labels_path)
    data = load_workspace_training_data(workspace, labels, config)
    model = _build(config, labels, torch.device("cpu"))
    features = CachedFeatures(data, model.image_tower, model.text_tower, workspace.feature_cache_dir,
                              torch.device("cpu"), config.feature_batch_size, progress=True)
    text = features.text_full.numpy()
    image = np.zeros((len(data.ids), features.image.shape[1]), np.float32)
    np.add.at(image, data.photo_owner, features.image.numpy())
    has = data.has_image
    image[has] /= data.photo_count[has][:, None]
    both = np.concatenate([text, image, has[:, None].astype(np.float32)], axis=1)
    train, test = data.rows("train"), data.rows("test")
    n_classes = len(labels)
    results = {}
    started = time.perf_counter()
    for name, matrix, fit_rows, test_rows in (
        ("text_only", text, train, test),
        ("image_only", image, train[has[train]], test[has[test]]),
        ("fused", both, train, test),
    ):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        classifier.fit(matrix[fit_rows], data.y[fit_rows])
        results[name] = classification_metrics(data.y[test_rows], classifier.predict(matrix[test_rows]), n_classes)
    results["seconds"] = time.perf_counter() - started
    return results


def embedding_throughput(workspace, model_dir: Path, listings: int, batch_size: int, image_batch_size: int) -> dict:
    """embed_catalog on a copy of the catalogue cut to ``listings`` listings (photos stay where they are)."""
    from sqlalchemy import delete, select

    from catalog import schema
    from catalog.store import Catalog
    from encoders.bundle import MultiModalModel
    from encoders.embed import embed_catalog

    scratch = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        shutil.copy(workspace.db_path, scratch / "catalog.db")
        catalog = Catalog(scratch / "catalog.db", root=workspace.root)
        with catalog.engine.begin() as conn:
            keep = list(conn.execute(select(schema.listings.c.id).order_by(schema.listings.c.id).limit(listings))
                        .scalars())
            conn.execute(delete(schema.images).where(schema.images.c.listing_id.not_in(keep)))
            conn.execute(delete(schema.listings).where(schema.listings.c.id.not_in(keep)))
            conn.exec_driver_sql("DROP TABLE IF EXISTS listing_embeddings")
        model = MultiModalModel.load(model_dir)
        stats = embed_catalog(model, catalog, batch_size=batch_size, image_batch_size=image_batch_size)
        incremental = embed_catalog(model, catalog, batch_size=batch_size, image_batch_size=image_batch_size,
                                    progress=False)
        catalog.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "listings": stats.encoded, "photos": stats.images_encoded, "seconds": stats.seconds,
        "listings_per_s": stats.listings_per_s, "photos_per_s": stats.images_encoded / stats.seconds,
        "batch_size": batch_size, "image_batch_size": image_batch_size,
        "rerun_seconds_nothing_changed": incremental.seconds, "rerun_encoded": incremental.encoded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="ingested workspace (marketsearch ingest)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--config", default="default", help="named model config (encoders/configs)")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="delete the cached backbone features first, so the timing includes computing them")
    parser.add_argument("--run", type=Path, default=None, help="reuse this finished run instead of training")
    parser.add_argument("--embed-listings", type=int, default=500, help="listings for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="embed: listings per batch")
    parser.add_argument("--image-batch-size", type=int, default=32, help="embed: photos per forward pass")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    import torch

    from core.workspace import Workspace
    from encoders.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    workspace = Workspace.at(args.workspace)
    load_before = os.getloadavg()
    if args.run is None:
        if args.fresh_cache:
            shutil.rmtree(workspace.feature_cache_dir, ignore_errors=True)
        result = train(workspace, TrainConfig(model_config=args.config))
        run_dir, report = result.run_dir, result.report
    else:
        run_dir = args.run
        report = json.loads((run_dir / "report.json").read_text())
    baseline = logistic_baseline(workspace, run_dir)
    throughput = embedding_throughput(workspace, run_dir / "model", args.embed_listings, args.batch_size,
                                      args.image_batch_size)
    results = {
        "run": str(run_dir), "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "training_seconds": report["seconds"], "backbones": report["backbones"], "test": report["test"],
        "best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"], "split_counts": report["split_counts"],
        "late_fusion": report.get("late_fusion"),
        "logistic_regression": baseline, "embedding": throughput,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    test = report["test"]
    print(f"training: {report['seconds']:.0f} s ({report['threads']} threads), best epoch {report['best_epoch']}")
    print("| input | towers + fusion acc | macro-F1 | logistic regression acc | macro-F1 | n |")
    print("|---|---|---|---|---|---|")
    for name in ("image_only", "text_only", "fused"):
        ours, lr = test[name], baseline[name]
        print(f"| {name} | {ours['accuracy']:.4f} | {ours['macro_f1']:.4f} | {lr['accuracy']:.4f} | "
              f"{lr['macro_f1']:.4f} | {ours['n']} |")
    print(f"title -> photo-only recall@10: {test['title_to_photo_recall@10']:.4f} (gallery {test['gallery_size']})")
    print(f"embedding: {throughput['listings_per_s']:.1f} listings/s, {throughput['photos_per_s']:.1f} photos/s "
          f"(batch {args.batch_size}, image batch {args.image_batch_size}, {args.threads} threads); "
          f"re-run with nothing changed: {throughput['rerun_seconds_nothing_changed']:.1f} s")


if __name__ == "__main__":
    main()
