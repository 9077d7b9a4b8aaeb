"""How much can fusion gain on this catalogue? Diagnostics behind the fused-accuracy target.

Two questions, answered on an ingested workspace with a finished training run (e.g. the real dev export):

1. Held-out headroom: the fusion head is trained on the training listings, whose image embeddings the
   image tower has partly memorised. Fitting a classifier on embeddings of listings the towers never
   saw (validation + test, 5-fold cross-validated logistic regression) shows what the photos can add
   to the text when the fit is honest: text alone vs text + image.
2. Lexical complement: a TF-IDF bag of words (title + description, unigrams and bigrams, fitted on the
   training listings) against, and beside, the frozen MiniLM features and the frozen image features,
   logistic regression trained on the train split and scored on the test split.

    .venv/bin/python -m bench.bench_fusion_headroom --workspace workspace/dev \
        --run workspace/dev/runs/20261121-124945 --json bench/results/fusion_headroom.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def tower_embeddings(model, text_pooled: np.ndarray, photo_pooled: np.ndarray, photo_owner: np.ndarray, n: int):
    """Listing text embeddings and image embeddings (mean of the listing's photos, L2-normalised)."""
    text = model.text_tower.embed_pooled(text_pooled)
    photos = model.image_tower.embed_pooled(photo_pooled)
    image = np.zeros((n, photos.shape[1]), np.float32)
    np.add.at(image, photo_owner, photos)
    norms = np.linalg.norm(image, axis=1, keepdims=True)
    return text, np.divide(image, norms, out=np.zeros_like(image), where=norms > 0)


def load_training_run(workspace_dir: Path, run_dir: Path, progress: bool):
    """A finished training run's data, model and cached backbone features, and its listings' tower embeddings:
    ``(workspace, data, model, features, text, image)``."""
    import torch

    from catalog.labels import LabelEncoder
    from core.workspace import Workspace
    from encoders.bundle import MultiModalModel
    from encoders.train import CachedFeatures, TrainConfig, load_workspace_training_data

    workspace = Workspace.at(workspace_dir)
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    data = load_workspace_training_data(workspace, LabelEncoder.from_json(workspace.labels_path), config)
    model = MultiModalModel.load(run_dir / "model")
    features = CachedFeatures(data, model.image_tower, model.text_tower, workspace.feature_cache_dir,
                              torch.device("cpu"), config.feature_batch_size, progress=progress)
    text, image = tower_embeddings(model, features.text_full.numpy(), features.image.numpy(), data.photo_owner,
                                   len(data.ids))
    return workspace, data, model, features, text, image


def cross_validated_accuracy(features: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(C=1.0, max_iter=3000), features, y, cv=splitter).mean())


def held_out_headroom(text: np.ndarray, image: np.ndarray, y: np.ndarray, rows: np.ndarray) -> dict:
    """5-fold CV accuracy on ``rows`` (listings unseen in training, with a photo): text, image, both."""
    return {
        "listings": len(rows),
        "text": cross_validated_accuracy(text[rows], y[rows]),
        "image": cross_validated_accuracy(image[rows], y[rows]),
        "text+image": cross_validated_accuracy(np.hstack([text[rows], image[rows]]), y[rows]),
    }


def lexical_complement(texts: list[str], minilm: np.ndarray, image: np.ndarray, y: np.ndarray,
                       train: np.ndarray, test: np.ndarray) -> dict:
    """Test accuracy of logistic regressions on TF-IDF, TF-IDF + MiniLM, TF-IDF + MiniLM + image features."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit([texts[i] for i in train])
    bag = tfidf.transform(texts)
    dense_text, dense_image = sp.csr_matrix(normalize(minilm)), sp.csr_matrix(normalize(image) * 0.5)
    results = {"vocabulary": len(tfidf.vocabulary_)}
    for name, matrix in (("tfidf", bag), ("tfidf+minilm", sp.hstack([bag, dense_text]).tocsr()),
                         ("tfidf+minilm+image", sp.hstack([bag, dense_text, dense_image]).tocsr())):
        classifier = LogisticRegression(C=10.0, max_iter=3000).fit(matrix[train], y[train])
        results[name] = float(classifier.score(matrix[test], y[test]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="ingested workspace with a training run")
    parser.add_argument("--run", type=Path, required=True, help="finished training run (its model/ and config.json)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    _, data, _, features, text, image = load_training_run(args.workspace, args.run, progress=True)
    n = len(data.ids)
    unseen = np.concatenate([data.rows("val"), data.rows("test")])
    headroom = held_out_headroom(text, image, data.y, unseen[data.has_image[unseen]])

    pooled_image = np.zeros((n, features.image.shape[1]), np.float32)
    np.add.at(pooled_image, data.photo_owner, features.image.numpy())
    lexical = lexical_complement(data.texts, features.text_full.numpy(), pooled_image, data.y,
                                 data.rows("train"), data.rows("test"))
    results = {"run": str(args.run), "held_out_headroom": headroom, "lexical_complement": lexical,
               "seconds": time.perf_counter() - started, "loadavg_before": load_before,
               "loadavg_after": os.getloadavg()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(f"held-out headroom, 5-fold CV on {headroom['listings']} unseen listings with a photo: "
          f"text {headroom['text']:.4f}, image {headroom['image']:.4f}, text+image {headroom['text+image']:.4f}")
    print(f"lexical complement, test accuracy: TF-IDF {lexical['tfidf']:.4f}, + MiniLM {lexical['tfidf+minilm']:.4f}, "
          f"+ image {lexical['tfidf+minilm+image']:.4f} (vocabulary {lexical['vocabulary']})")
    print(f"{results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
