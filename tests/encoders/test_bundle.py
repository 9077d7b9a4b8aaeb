"""MultiModalModel: the contract of docs/architecture.md and an exact save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.bundle import MultiModalModel


def _photos():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)) for _ in range(4)]


def test_encoders_return_normalised_float32(tiny_model):
    texts = tiny_model.encode_texts(["red bike", "sofa", "lamp"], batch_size=2)
    images = tiny_model.encode_images(_photos(), batch_size=3)
    assert texts.shape == (3, tiny_model.embed_dim) and images.shape == (4, tiny_model.embed_dim)
    assert texts.dtype == images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="list of strings"):
        tiny_model.encode_texts("red bike")


def test_save_load_is_exact(tiny_model, tmp_path):
    folder = tiny_model.save(tmp_path / "model")
    loaded = MultiModalModel.load(folder)
    texts = ["red bike", "oak table"]
    np.testing.assert_array_equal(loaded.encode_texts(texts), tiny_model.encode_texts(texts))
    np.testing.assert_array_equal(loaded.encode_images(_photos()), tiny_model.encode_images(_photos()))
    emb = tiny_model.encode_texts(texts)
    np.testing.assert_array_equal(loaded.classify(emb, None), tiny_model.classify(emb, None))
    assert loaded.fingerprint == tiny_model.fingerprint
    assert loaded.labels == tiny_model.labels
    assert loaded.backbones["image"]["name"] == "tiny_cnn"
    assert loaded.backbones["text"]["source"] == "random initialisation"
    # saving again over an existing bundle replaces it atomically (no leftovers beside it)
    tiny_model.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_fingerprint_follows_the_weights(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "model")
    changed = MultiModalModel.load(tmp_path / "model")
    with torch.no_grad():
        changed.fusion.net[0].bias[0] += 1e-3
    changed.__dict__.pop("fingerprint", None)
    assert changed.fingerprint != tiny_model.fingerprint
    assert len(tiny_model.fingerprint) == 64


def test_classify_handles_missing_modalities(tiny_model):
    text = tiny_model.encode_texts(["a", "b", "c"])
    image = tiny_model.encode_images(_photos()[:3])
    probs = tiny_model.classify(text, image)
    assert probs.shape == (3, len(tiny_model.labels))
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    # a zero image row means "no photo": same as text alone
    image[1] = 0
    mixed = tiny_model.classify(text, image)
    np.testing.assert_allclose(mixed[1], tiny_model.classify(text[1:2], None)[0], rtol=1e-5)
    # a zero text row (image-only query) is the image alone
    text[2] = 0
    np.testing.assert_allclose(tiny_model.classify(text, image)[2], tiny_model.classify(None, image[2:3])[0],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="text_emb, image_emb or both"):
        tiny_model.classify(None, None)
    with pytest.raises(ValueError, match="columns"):
        tiny_model.classify(np.zeros((1, 3)), None)


def test_load_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="marketsearch train"):
        MultiModalModel.load(tmp_path)


def test_late_fusion_weights_round_trip_and_leave_single_modality_alone(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "plain")
    model = MultiModalModel.load(tmp_path / "plain")
    text = model.encode_texts(["a", "b", "c"])
    image = model.encode_images(_photos()[:3])
    plain_fused, plain_text, plain_image = model.classify(text, image), model.classify(text, None), \
        model.classify(None, image)
    model.fusion.expert_weights = (0.3, 0.6, 0.2)
    model.__dict__.pop("fingerprint", None)
    assert model.fingerprint != tiny_model.fingerprint  # the weights are part of the model
    folder = model.save(tmp_path / "late")
    loaded = MultiModalModel.load(folder)
    assert loaded.fusion.expert_weights == (0.3, 0.6, 0.2)
    assert loaded.fingerprint == model.fingerprint
    fused = loaded.classify(text, image)
    np.testing.assert_array_equal(fused, model.classify(text, image))
    assert not np.allclose(fused, plain_fused)
    np.testing.assert_allclose(fused.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(loaded.classify(text, None), plain_text)
    np.testing.assert_array_equal(loaded.classify(None, image), plain_image)
