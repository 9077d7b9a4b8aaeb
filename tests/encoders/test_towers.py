"""Towers: shapes, normalisation, pooling, freezing and the save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.modules import Pooling, Projection
from encoders.towers import Tower, build_image_tower, build_text_tower, get_model_config, list_towers


@pytest.fixture(scope="module")
def tiny_towers():
    torch.manual_seed(0)
    image_tower, _ = build_image_tower("tiny_cnn", pretrained=False, embed_dim=32, hidden_dim=64)
    text_tower, _ = build_text_tower("tiny_distilbert", pretrained=False, embed_dim=32, hidden_dim=64)
    return image_tower.eval(), text_tower.eval()


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (80, 50), (50, 90)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def test_embeddings_are_float32_unit_vectors_of_the_shared_dimension(tiny_towers):
    image_tower, text_tower = tiny_towers
    images = image_tower.encode(_photos(5), batch_size=2)
    texts = text_tower.encode(["red mountain bike", "oak dining table with four chairs", "x"], batch_size=2)
    assert images.shape == (5, 32) and texts.shape == (3, 32)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert text_tower.encode([]).shape == (0, 32)


def test_batching_does_not_change_embeddings(tiny_towers):
    image_tower, text_tower = tiny_towers
    photos = _photos(5)
    np.testing.assert_allclose(image_tower.encode(photos, batch_size=1), image_tower.encode(photos, batch_size=5),
                               atol=1e-5)
    texts = ["short", "a much longer text about a sofa that needs padding in a batch"]
    np.testing.assert_allclose(text_tower.encode(texts, batch_size=1), text_tower.encode(texts, batch_size=2),
                               atol=1e-5)


def test_any_pil_mode_is_accepted_and_other_inputs_are_refused(tiny_towers):
    image_tower, _ = tiny_towers
    grey = Image.new("L", (40, 40), 128)
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 255))
    assert image_tower.encode([grey, rgba]).shape == (2, 32)
    with pytest.raises(ValueError, match="PIL"):
        image_tower.encode([np.zeros((4, 4, 3))])


def test_masked_mean_pooling_ignores_padding():
    pooling = Pooling("masked_mean", 2)
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    out = pooling({"token_embeddings": tokens, "attention_mask": torch.tensor([[1, 1, 0]])})["pooled"]
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0]]))
    avg = Pooling("global_avg", 1)({"feature_map": torch.arange(4.0).reshape(1, 1, 2, 2)})["pooled"]
    torch.testing.assert_close(avg, torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="masked_mean"):
        Pooling("max", 2)


def test_tower_round_trip_gives_identical_embeddings(tiny_towers, tmp_path):
    image_tower, text_tower = tiny_towers
    image_tower.save(tmp_path / "image")
    text_tower.save(tmp_path / "text")
    manifest = json.loads((tmp_path / "image" / "tower.json").read_text())
    assert [m["type"] for m in manifest["modules"]] == ["ImageBackbone", "Pooling", "Projection", "Normalize"]
    # the text backbone folder is a plain Hugging Face checkpoint with its tokenizer
    assert (tmp_path / "text" / "0_TextBackbone" / "config.json").is_file()
    assert (tmp_path / "text" / "0_TextBackbone" / "tokenizer_config.json").is_file()
    photos, texts = _photos(3), ["red bike", "blue sofa"]
    np.testing.assert_array_equal(Tower.load(tmp_path / "image").encode(photos), image_tower.encode(photos))
    np.testing.assert_array_equal(Tower.load(tmp_path / "text").encode(texts), text_tower.encode(texts))
    loaded = Tower.load(tmp_path / "image")
    assert loaded.backbone.preprocessing == image_tower.backbone.get_config_dict()["preprocessing"]


def test_unknown_module_type_and_bad_weights_fail_clearly(tiny_towers, tmp_path):
    image_tower, _ = tiny_towers
    image_tower.save(tmp_path / "image")
    manifest_path = tmp_path / "image" / "tower.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["modules"][2]["type"] = "os.system"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown module type 'os.system'"):
        Tower.load(tmp_path / "image")
    Projection(7, 4).save(tmp_path / "proj")
    config = json.loads((tmp_path / "proj" / "config.json").read_text())
    config["in_dim"] = 9
    (tmp_path / "proj" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        Projection.load(tmp_path / "proj")
    with pytest.raises(FileNotFoundError, match="tower.json"):
        Tower.load(tmp_path / "nothing")


def test_freeze_backbone_leaves_only_the_top_blocks_trainable():
    tower, _ = build_image_tower("tiny_cnn", pretrained=False, embed_dim=8, hidden_dim=0)
    tower.freeze_backbone(0)
    assert not any(p.requires_grad for p in tower.backbone.parameters())
    assert all(p.requires_grad for p in tower.projection.parameters())
    tower.freeze_backbone(1)
    blocks = tower.backbone.blocks
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    text, _ = build_text_tower("tiny_distilbert", pretrained=False, embed_dim=8, hidden_dim=0)
    text.freeze_backbone(1)
    trainable = {n for n, p in text.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n for n in trainable)


def test_named_configs():
    assert {"default", "design-card", "offline", "offline-small", "tiny"} <= set(list_towers())
    config = get_model_config("design-card")
    assert config.image.backbone == "resnet50" and config.text.backbone == "distilbert-base-uncased"
    assert get_model_config("offline").embed_dim == 256
    with pytest.raises(ValueError, match="available"):
        get_model_config("nope")
