"""FusionClassifier: missing modalities, modality dropout, save/load, and that fusing helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion.classifier import FusionClassifier


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


def test_fusion_beats_each_modality_alone_when_they_carry_different_information():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    image, text, y = _xor_data(1024, rng)
    head = FusionClassifier(2, 2, 4, hidden_dim=32, dropout=0.0, modality_dropout=0.3)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(torch.from_numpy(image), torch.from_numpy(text)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    image_t, text_t, y_t = _xor_data(512, rng)
    fused = (head.predict_proba(image_t, text_t).argmax(1) == y_t).mean()
    image_only = (head.predict_proba(image_t, None).argmax(1) == y_t).mean()
    text_only = (head.predict_proba(None, text_t).argmax(1) == y_t).mean()
    assert fused > 0.9
    # one bit of two: about 0.5 each, and thanks to modality dropout well above chance (0.25)
    assert 0.4 < image_only < 0.6 and 0.4 < text_only < 0.6
