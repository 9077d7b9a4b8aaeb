"""Lever experiment (cross-modal): does agreement on the full category path lift title -> photo recall@10?

    .venv/bin/python -m bench.bench_crossmodal_paths --workspace workspace/dev --run workspace/dev/runs/RUN

The training report's cross-modal recall@10 (``encoders.train.evaluate_rows``: each test title against every
listing with a photo, represented by the mean of its photos' image-tower embeddings) with a second term: two
classifiers of the full category path fitted on the training listings, TF-IDF of the title (word 1-2 grams) and
the photos' pooled backbone features, each a logistic regression; a gallery listing's path probabilities are its
photos' mean. Score = cosine + w * log(sum over paths of P(path | title) P(path | photos) + 1e-4), and, as an
embedding would carry it, cosine + a * that sum. Prints recall@10 on the validation and test titles for each w and
a (w = 0 is the report's figure), and both classifiers' path accuracy on the test listings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
DOT_WEIGHTS = (0.5, 1.0, 2.0)


def recall_at_10(scores: np.ndarray, truth: np.ndarray) -> float:
    true = scores[np.arange(len(truth)), truth]
    return float(((scores > true[:, None]).sum(axis=1) < 10).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="ingested workspace with a training run")
    parser.add_argument("--run", type=Path, required=True, help="finished training run (its model/ and config.json)")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from bench.bench_fusion_headroom import load_training_run
    from catalog.store import Catalog

    workspace, data, model, features, _, image = load_training_run(args.workspace, args.run, progress=False)
    title = model.text_tower.embed_pooled(features.text_title.numpy())
    catalog = Catalog(workspace.db_url, root=workspace.root)
    try:
        path_of = {x.id: x.category or "" for batch in catalog.iter_listings(1000) for x in batch}
    finally:
        catalog.close()
    paths = np.array([path_of[i] for i in data.ids])
    train = data.split == "train"

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(data.titles)
    by_title = LogisticRegression(C=10, max_iter=2000).fit(words[train], paths[train])
    classes = list(by_title.classes_)
    p_title = by_title.predict_proba(words)

    owner = data.photo_owner
    pooled = features.image.numpy()
    pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    by_photo = LogisticRegression(C=1.0, max_iter=2000).fit(pooled[train[owner]], paths[owner][train[owner]])
    column = {c: j for j, c in enumerate(by_photo.classes_)}
    p_each = by_photo.predict_proba(pooled)
    p_photo_each = np.zeros((len(pooled), len(classes)))
    for j, c in enumerate(classes):  # the title classifier's class order; a path no training photo had stays 0
        if c in column:
            p_photo_each[:, j] = p_each[:, column[c]]
    p_photo = np.zeros((len(data.ids), len(classes)))
    np.add.at(p_photo, owner, p_photo_each)
    has = data.has_image
    p_photo[has] /= data.photo_count[has][:, None]

    test = data.split == "test"
    result = {"path_accuracy": {"title": float((np.array(classes)[p_title.argmax(1)] == paths)[test].mean()),
                                "photos": float((np.array(classes)[p_photo.argmax(1)] == paths)[test & has].mean())},
              "paths": len(classes)}
    accuracy = result["path_accuracy"]
    print(f"full-path accuracy on the test listings ({len(classes)} paths): title {accuracy['title']:.3f}, "
          f"photos {accuracy['photos']:.3f}")
    gallery = np.flatnonzero(has)
    position = {row: i for i, row in enumerate(gallery)}
    for part in ("val", "test"):
        queries = np.flatnonzero((data.split == part) & has)
        truth = np.array([position[r] for r in queries])
        cosine = title[queries] @ image[gallery].T
        agreement = p_title[queries] @ p_photo[gallery].T
        recalls = {f"log w={w:g}": recall_at_10(cosine + w * np.log(agreement + 1e-4), truth) for w in WEIGHTS}
        recalls.update({f"dot a={a:g}": recall_at_10(cosine + a * agreement, truth) for a in DOT_WEIGHTS})
        result[part] = {"queries": len(queries), "gallery": len(gallery), "recall@10": recalls}
        print(f"{part}: {len(queries)} titles, gallery {len(gallery)}: "
              + ", ".join(f"{name} {value:.4f}" for name, value in recalls.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
