"""The lexical branch: a bag of words that knows what the head does not, pooled into the bundle's classify."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.bundle import MultiModalModel
from fusion.lexical import LexicalBranch

# three classes (the tiny model's), each named by its own model words; the head below knows nothing
WORDS = {0: ["fridge", "freezer", "kettle", "toaster"], 1: ["sofa", "armchair", "rug", "lamp"],
         2: ["ticket", "voucher", "stamp", "coin"]}


def listings(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    filler = ["used", "good", "condition", "pickup", "only", "cheap"]
    texts = [" ".join([*rng.choice(WORDS[c], 2), *rng.choice(filler, 3)]) for c in y]
    return texts, y


@pytest.fixture(scope="module")
def branch() -> LexicalBranch:
    texts, y = listings(120, 0)
    val_texts, val_y = listings(60, 1)
    uniform = np.full((60, 3), np.log(1 / 3))  # a head that cannot tell the classes apart
    return LexicalBranch.fit(texts, y, val_texts, val_y, {"text": uniform, "fused": uniform}, 3)


def test_the_words_alone_find_the_category_and_the_pooling_weights_trust_them(branch):
    texts, y = listings(60, 2)
    assert (branch.log_proba(texts).argmax(1) == y).mean() > 0.95
    head_weight, words_weight = branch.weights["text"]
    assert words_weight > 0.5  # the words carry the validation cross-entropy; the uniform head adds nothing


def test_the_bundle_pools_the_words_into_classify_and_keeps_them_through_save_and_load(tiny_model, branch, tmp_path):
    texts, y = listings(30, 3)
    text_emb = tiny_model.encode_texts(texts)
    with_words = MultiModalModel(tiny_model.image_tower, tiny_model.text_tower, tiny_model.fusion, tiny_model.labels,
                                 lexical=branch)
    head_only = tiny_model.classify(text_emb, None)
    pooled = with_words.classify(text_emb, None, texts=texts)
    assert (pooled.argmax(1) == y).mean() > (head_only.argmax(1) == y).mean() + 0.3
    np.testing.assert_allclose(pooled.sum(1), 1, rtol=1e-5)
    # without the words the head alone answers (a photo-only query has none)
    np.testing.assert_array_equal(with_words.classify(text_emb, None), head_only)
    # a row without text (zero text vector) is not pooled with words
    zero_text = text_emb.copy()
    zero_text[0] = 0
    image_emb = tiny_model.encode_images([Image.new("RGB", (64, 64), "red")] * 30)
    mixed = with_words.classify(zero_text, image_emb, texts=texts)
    np.testing.assert_allclose(mixed[0], tiny_model.classify(None, image_emb[:1])[0], rtol=1e-5)
    # the fingerprint keys the stored embeddings, which the words do not change
    assert with_words.fingerprint == tiny_model.fingerprint
    loaded = MultiModalModel.load(with_words.save(tmp_path / "model"))
    assert loaded.lexical is not None and loaded.fingerprint == with_words.fingerprint
    np.testing.assert_array_equal(loaded.classify(text_emb, None, texts=texts), pooled)
    with pytest.raises(ValueError, match="one per embedding row"):
        with_words.classify(text_emb, None, texts=texts[:2])


def test_a_catalogue_too_small_for_words_is_refused_with_a_reason():
    uniform = np.full((2, 3), np.log(1 / 3))
    with pytest.raises(ValueError, match="at least two categories"):
        LexicalBranch.fit(["red kettle", "blue kettle"], np.array([0, 0]), ["x", "y"], np.array([0, 0]),
                          {"text": uniform, "fused": uniform}, 3)
    with pytest.raises(ValueError, match="no usable words"):
        LexicalBranch.fit(["kettle", "sofa"], np.array([0, 1]), ["x", "y"], np.array([0, 1]),
                          {"text": uniform, "fused": uniform}, 3)
