"""Evaluation of the fusion classifier: image-only, text-only and fused results side by side."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

logger = logging.getLogger(__name__)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """accuracy and macro-F1 (over the classes present in y_true or y_pred) for int label arrays."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "n": int(len(y_true)),
    }


def evaluate_fusion(classifier, image_emb: np.ndarray, text_emb: np.ndarray, has_image: np.ndarray,
                    y_true: np.ndarray) -> dict:
    """Accuracy and macro-F1 of ``classifier`` given the image only, the text only, and both.

    image_emb, text_emb: float32 (n, d); has_image: bool (n,) (rows without a photo have a zero image
    vector); y_true: int (n,). Image-only is measured on rows with a photo; text-only and fused on all
    rows (fused falls back to text for rows without a photo). Returns {"image_only", "text_only", "fused"}
    each with accuracy, macro_f1, n, plus "predictions" (fused argmax, int64 (n,)).
    """
    has_image = np.asarray(has_image, bool)
    y_true = np.asarray(y_true, np.int64)
    num_classes = classifier.num_classes
    image_pred = classifier.predict_proba(image_emb[has_image], None).argmax(1)
    text_pred = classifier.predict_proba(None, text_emb).argmax(1)
    fused_pred = classifier.predict_proba(image_emb, text_emb, image_present=has_image).argmax(1)
    results = {
        "image_only": classification_metrics(y_true[has_image], image_pred, num_classes),
        "text_only": classification_metrics(y_true, text_pred, num_classes),
        "fused": classification_metrics(y_true, fused_pred, num_classes),
        "predictions": fused_pred.astype(np.int64),
    }
    logger.info("fusion eval: image-only acc %.3f, text-only acc %.3f, fused acc %.3f",
                results["image_only"]["accuracy"], results["text_only"]["accuracy"], results["fused"]["accuracy"])
    return results


def save_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path,
                          title: str = "Fused classifier, test products") -> np.ndarray:
    """Row-normalised confusion matrix as a PNG (written atomically); returns the raw count matrix."""
    labels = list(range(len(class_names)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.55 * len(class_names) + 3)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(labels, [name[:24] for name in class_names], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(labels, [name[:24] for name in class_names], fontsize=8)
    for i in labels:
        for j in labels:
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return counts
