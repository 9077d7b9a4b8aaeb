"""FusionClassifier: missing modalities, modality dropout, save/load, and that fusing helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion.classifier import FusionClassifier, fit_expert_weights


def test_forward_with_either_modality_alone_or_both():
    torch.manual_seed(0)
    head = FusionClassifier(8, 6, 4, hidden_dim=16).eval()
    image, text = torch.randn(5, 8), torch.randn(5, 6)
    assert head(image, text).shape == (5, 4)
    assert head(image, None).shape == (5, 4)
    assert head(None, text).shape == (5, 4)
    # None is the same as a zero vector with its presence flag off
    absent = torch.zeros(5, dtype=torch.bool)
    torch.testing.assert_close(head(None, text), head(torch.randn(5, 8), text, image_present=absent))
    with pytest.raises(ValueError, match="at least one"):
        head(None, None)
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        head(torch.randn(5, 7), text)


def test_modality_dropout_hides_exactly_one_modality_of_complete_rows():
    torch.manual_seed(0)
    head = FusionClassifier(4, 4, 3, modality_dropout=1.0)
    n = 2000
    image_present = torch.ones(n, dtype=torch.bool)
    image_present[:100] = False  # text-only rows stay text-only
    text_present = torch.ones(n, dtype=torch.bool)
    image_after, text_after = head.presence_after_dropout(image_present, text_present)
    assert not (image_after & text_after).any()  # every complete row lost one modality
    assert (image_after | text_after).all()  # never both
    assert not image_after[:100].any() and text_after[:100].all()
    # half each way, roughly
    assert 0.4 < image_after[100:].float().mean().item() < 0.6

    head_30 = FusionClassifier(4, 4, 3, modality_dropout=0.3)
    image_after, text_after = head_30.presence_after_dropout(torch.ones(n, dtype=torch.bool),
                                                             torch.ones(n, dtype=torch.bool))
    dropped = (~(image_after & text_after)).float().mean().item()
    assert 0.25 < dropped < 0.35


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    head = FusionClassifier(4, 4, 3, dropout=0.0, modality_dropout=1.0)
    image, text = torch.randn(64, 4), torch.randn(64, 4)
    head.eval()
    torch.testing.assert_close(head(image, text), head(image, text))
    head.train()
    train_logits = head(image, text)
    head.eval()
    assert not torch.allclose(train_logits, head(image, text))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    head = FusionClassifier(8, 8, 3, hidden_dim=16, classes=["a", "b", "c"]).eval()
    head.save(tmp_path / "fusion")
    loaded = FusionClassifier.load(tmp_path / "fusion")
    image, text = np.random.default_rng(0).normal(size=(2, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(head.predict_proba(image, text), loaded.predict_proba(image, text))
    assert loaded.classes == ["a", "b", "c"]
    assert (tmp_path / "fusion" / "labels.json").is_file()


def _xor_data(n: int, rng: np.random.Generator):
    """4 classes = (a, b) bits; the image carries only a, the text only b (plus noise)."""
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    image = np.stack([2 * a - 1, rng.normal(size=n)], 1) + 0.3 * rng.normal(size=(n, 2))
    text = np.stack([2 * b - 1, rng.normal(size=n)], 1) + 0.3 * rng.normal(size=(n, 2))
    return image.astype(np.float32), text.astype(np.float32), (2 * a + b).astype(np.int64)


def _fit(head: FusionClassifier, image: np.ndarray, text: np.ndarray, y: np.ndarray, steps: int) -> None:
    """Full-batch Adam on the joint head's cross-entropy (modality dropout on, as in training)."""
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(torch.from_numpy(image), torch.from_numpy(text)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_fusion_beats_each_modality_alone_when_they_carry_different_information():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    image, text, y = _xor_data(1024, rng)
    head = FusionClassifier(2, 2, 4, hidden_dim=32, dropout=0.0, modality_dropout=0.3)
    _fit(head, image, text, y, steps=300)
    image_t, text_t, y_t = _xor_data(512, rng)
    fused = (head.predict_proba(image_t, text_t).argmax(1) == y_t).mean()
    image_only = (head.predict_proba(image_t, None).argmax(1) == y_t).mean()
    text_only = (head.predict_proba(None, text_t).argmax(1) == y_t).mean()
    assert fused > 0.9
    # one bit of two: about 0.5 each, and thanks to modality dropout well above chance (0.25)
    assert 0.4 < image_only < 0.6 and 0.4 < text_only < 0.6


def _overfit_image_data(n: int, rng: np.random.Generator, image_noise: float):
    """4 classes; the text is a fair signal, the image a clean one on 'training' rows and a poor one elsewhere."""
    y = rng.integers(0, 4, n)
    onehot = np.eye(4)[y]
    text = onehot + 0.6 * rng.normal(size=(n, 4))
    image = onehot + image_noise * rng.normal(size=(n, 4))
    return image.astype(np.float32), text.astype(np.float32), y.astype(np.int64)


def _trained_on_clean_images(rng: np.random.Generator) -> FusionClassifier:
    torch.manual_seed(0)
    image, text, y = _overfit_image_data(2048, rng, image_noise=0.1)
    head = FusionClassifier(4, 4, 4, hidden_dim=32, dropout=0.0, modality_dropout=0.3)
    _fit(head, image, text, y, steps=200)
    return head


def test_fitted_expert_weights_stop_the_head_over_trusting_training_set_images():
    """The situation on the real data: the joint head learns that training images are reliable; on new
    rows they are not. Weights fitted on held-out rows bring fusion back to at least the text alone."""
    rng = np.random.default_rng(0)
    head = _trained_on_clean_images(rng)
    val_image, val_text, val_y = _overfit_image_data(1000, rng, image_noise=2.0)
    test_image, test_text, test_y = _overfit_image_data(2000, rng, image_noise=2.0)

    def accuracy(image_emb, text_emb):
        return (head.predict_proba(image_emb, text_emb).argmax(1) == test_y).mean()

    joint, text_only = accuracy(test_image, test_text), accuracy(None, test_text)
    assert joint < text_only - 0.03  # the plain joint head trusts the (now noisy) image too much

    weights, val_accuracy = fit_expert_weights(head, val_image, val_text, val_y)
    head.expert_weights = weights
    assert weights[1] > 0  # it leans on the text expert
    assert accuracy(test_image, test_text) >= text_only - 0.01
    assert accuracy(test_image, test_text) > joint + 0.03
    # single-modality predictions do not depend on the expert weights
    head.expert_weights = (1.0, 0.0, 0.0)
    plain_text = head.predict_proba(None, test_text)
    head.expert_weights = weights
    np.testing.assert_array_equal(head.predict_proba(None, test_text), plain_text)


def test_fit_expert_weights_lowers_held_out_cross_entropy_and_reports_its_accuracy():
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    head = _trained_on_clean_images(rng)
    image, text, y = _overfit_image_data(300, rng, image_noise=1.0)
    plain_nll = F.nll_loss(torch.log(torch.from_numpy(head.predict_proba(image, text))), torch.from_numpy(y))
    weights, fitted = fit_expert_weights(head, image, text, y)
    assert all(w > 0 for w in weights)
    head.expert_weights = weights
    probs = head.predict_proba(image, text)
    assert F.nll_loss(torch.log(torch.from_numpy(probs)), torch.from_numpy(y)) < plain_nll
    assert abs((probs.argmax(1) == y).mean() - fitted) < 1e-9


def test_expert_weights_round_trip_and_are_checked(tmp_path):
    torch.manual_seed(0)
    head = FusionClassifier(8, 8, 3, hidden_dim=16, expert_weights=(0.5, 1.0, 0.25)).eval()
    head.save(tmp_path / "fusion")
    loaded = FusionClassifier.load(tmp_path / "fusion")
    assert loaded.expert_weights == (0.5, 1.0, 0.25)
    image, text = np.random.default_rng(0).normal(size=(2, 7, 8)).astype(np.float32)
    present = np.array([True, False, True, True, False, True, True])
    np.testing.assert_array_equal(head.predict_proba(image, text, present), loaded.predict_proba(image, text, present))
    # rows without a photo are the text expert alone
    np.testing.assert_allclose(head.predict_proba(image, text, present)[~present],
                               head.predict_proba(None, text[~present]), rtol=1e-5, atol=1e-6)
    for bad in [(1.0, 0.0), (-1.0, 1.0, 0.0), (0.0, 0.0, 1.0), (float("nan"), 1.0, 0.0)]:
        with pytest.raises(ValueError, match="expert_weights"):
            FusionClassifier(8, 8, 3, expert_weights=bad)
        with pytest.raises(ValueError, match="expert_weights"):
            head.expert_weights = bad
