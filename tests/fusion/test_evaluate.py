"""Side-by-side evaluation and the confusion matrix figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.classifier import FusionClassifier
from fusion.evaluate import classification_metrics, evaluate_fusion, save_confusion_matrix


def test_metrics_on_a_hand_computed_case():
    metrics = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # class 0: P=1, R=0.5 -> F1 2/3; class 1: P=2/3, R=1 -> F1 0.8
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["n"] == 4


def test_evaluate_reports_three_modes_with_their_row_counts():
    torch.manual_seed(0)
    head = FusionClassifier(4, 4, 3, hidden_dim=8)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 4)).astype(np.float32)
    text = rng.normal(size=(10, 4)).astype(np.float32)
    has_image = np.array([True] * 7 + [False] * 3)
    image[~has_image] = 0
    y = rng.integers(0, 3, 10)
    result = evaluate_fusion(head, image, text, has_image, y)
    assert result["image_only"]["n"] == 7
    assert result["text_only"]["n"] == 10 and result["fused"]["n"] == 10
    expected = head.predict_proba(image, text, image_present=has_image).argmax(1)
    np.testing.assert_array_equal(result["predictions"], expected)
    assert result["fused"]["accuracy"] == pytest.approx((expected == y).mean())


def test_confusion_matrix_png(tmp_path):
    counts = save_confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ["a", "b", "c"],
                                   tmp_path / "cm.png")
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
