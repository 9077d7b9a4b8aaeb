"""Mid-level features: MobileNetV2's block 16 joined to its final map, for the photo vector."""

from __future__ import annotations

import json

import pytest
import torch

from encoders.backbones import (
    MID_FEATURE_SCALE,
    MOBILENET_V2_MID_BLOCK,
    MobileNetV2Trunk,
    build_image_net,
    load_image_weights,
)
from encoders.features import backbone_key
from encoders.modules import ImageBackbone
from encoders.towers import build_image_tower


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def test_the_mid_block_joins_the_final_map_scaled(pixels):
    plain, mid = MobileNetV2Trunk(), MobileNetV2Trunk(mid_block=MOBILENET_V2_MID_BLOCK)
    load_image_weights(plain, "mobilenet_v2")
    load_image_weights(mid, "mobilenet_v2")
    plain.eval(), mid.eval()
    with torch.no_grad():
        joined = mid(pixels)
        final = plain(pixels)
        block_output = plain.net.features[: MOBILENET_V2_MID_BLOCK + 1](pixels)
    assert plain.out_channels == 1280 and mid.out_channels == 1280 + block_output.shape[1] == joined.shape[1]
    torch.testing.assert_close(joined[:, :1280], final)
    torch.testing.assert_close(joined[:, 1280:], block_output * MID_FEATURE_SCALE)


def test_a_mid_block_off_the_final_grid_or_another_net_is_refused():
    with pytest.raises(ValueError, match="grid"):
        MobileNetV2Trunk(mid_block=6)
    with pytest.raises(ValueError, match="before the last"):
        MobileNetV2Trunk(mid_block=18)
    with pytest.raises(ValueError, match="mobilenet_v2 only"):
        build_image_net("tiny_cnn", mid_block=MOBILENET_V2_MID_BLOCK)


def test_new_towers_pool_the_mid_block_and_round_trip(tmp_path, pixels):
    tower, _ = build_image_tower("mobilenet_v2")
    assert tower.backbone.mid_block == MOBILENET_V2_MID_BLOCK and tower.pooled_dim == tower.backbone.net.out_channels
    tower.backbone.save(tmp_path / "backbone")
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["mid_block"] == MOBILENET_V2_MID_BLOCK
    loaded = ImageBackbone.load(tmp_path / "backbone").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded({"pixel_values": pixels})["feature_map"],
                                   tower.backbone.eval()({"pixel_values": pixels})["feature_map"])


def test_a_backbone_saved_without_mid_features_loads_and_describes_itself_as_before(tmp_path):
    """Bundles from before mid-level features: same config (so the same model fingerprint) and feature-cache key."""
    plain, _ = build_image_tower("mobilenet_v2", mid_features=False)
    with_mid, _ = build_image_tower("mobilenet_v2")
    config = plain.backbone.get_config_dict()
    assert "mid_block" not in config and plain.pooled_dim == 1280
    plain.backbone.save(tmp_path / "old")
    assert json.loads((tmp_path / "old" / "config.json").read_text()) == config
    loaded = ImageBackbone.load(tmp_path / "old")
    assert loaded.mid_block is None and loaded.get_config_dict() == config
    assert backbone_key(plain) != backbone_key(with_mid)


def test_training_the_top_image_blocks_on_cached_maps_refuses_a_mid_block():
    """Those maps feed the top blocks one by one: the mid block's output would be missing from the pooled vector."""
    from catalog.labels import LabelEncoder
    from encoders.train import TrainConfig, _build

    config = TrainConfig(model_config="offline-small", image_finetune_blocks=1, allow_download=False)
    with pytest.raises(ValueError, match="mid_features"):
        _build(config, LabelEncoder(["a", "b"]), torch.device("cpu"))
