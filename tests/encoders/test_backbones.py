"""Weight resolution: explicit choices fail clearly (and fast) without weights; auto falls back loudly."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import torch

from encoders import backbones
from encoders.backbones import MissingWeightsError, resolve_image_backbone, resolve_text_backbone


@pytest.fixture()
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on an offline machine (and no test touches the network)."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MARKETSEARCH_OFFLINE", raising=False)
    return tmp_path


def test_explicit_resnet50_without_weights_names_cache_and_offline_choice(empty_caches, no_network):
    backbones.build_image_net("resnet50")  # warm the imports: the timing below is the weight lookup only
    started = time.perf_counter()
    with pytest.raises(MissingWeightsError) as error:
        resolve_image_backbone("resnet50")
    assert time.perf_counter() - started < 30  # no hang: fails at the first refused connection
    message = str(error.value)
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in message
    assert "mobilenet_v2" in message and "resnet50-11ad3fa6.pth" in message


def test_explicit_distilbert_without_weights_names_cache_and_offline_choice(empty_caches, no_network):
    import huggingface_hub  # noqa: F401  warm the import: the timing below is the weight lookup only

    started = time.perf_counter()
    with pytest.raises(MissingWeightsError) as error:
        resolve_text_backbone("distilbert-base-uncased")
    assert time.perf_counter() - started < 30  # no hang: fails at the first refused connection
    message = str(error.value)
    assert str(empty_caches / "hf") in message
    assert "all-MiniLM-L6-v2" in message and "local checkpoint folder" in message


def test_downloads_off_fails_without_trying_the_network(empty_caches, monkeypatch):
    monkeypatch.setenv("MARKETSEARCH_OFFLINE", "1")

    def no_calls(*args, **kwargs):
        raise AssertionError("tried the network although downloads are off")

    monkeypatch.setattr(socket, "getaddrinfo", no_calls)
    with pytest.raises(MissingWeightsError, match="downloads off"):
        resolve_image_backbone("resnet50", allow_download=True)
    with pytest.raises(MissingWeightsError, match="downloads off"):
        resolve_text_backbone("distilbert-base-uncased", allow_download=False)


def test_auto_falls_back_to_offline_backbones_and_says_why(empty_caches, no_network, caplog):
    with caplog.at_level(logging.WARNING, logger="encoders.backbones"):
        net, choice = resolve_image_backbone("auto")
    assert choice.name == "mobilenet_v2" and choice.pretrained and choice.requested == "auto"
    assert "resnet50" in choice.fallback_reason.lower()
    assert any("using offline mobilenet_v2" in r.message for r in caplog.records)
    # the bundled ImageNet weights were really loaded (not the random initialisation)
    reference = torch.load(backbones.mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.net.features[0][0].weight, reference["features.0.0.weight"])

    with caplog.at_level(logging.WARNING, logger="encoders.backbones"):
        model, tokenizer, text_choice = resolve_text_backbone("auto")
    assert text_choice.name == "all-MiniLM-L6-v2" and text_choice.pretrained
    assert "distilbert-base-uncased" in text_choice.fallback_reason
    assert any("using offline all-MiniLM-L6-v2" in r.message for r in caplog.records)
    assert tokenizer("Red Bike")["input_ids"] == tokenizer("red bike")["input_ids"]  # uncased vocabulary


def test_unknown_names_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match="resnet50"):
        resolve_image_backbone("vgg16")
    with pytest.raises(ValueError, match="local Hugging Face checkpoint folder"):
        resolve_text_backbone(str(tmp_path / "missing-folder"))


def test_random_variants_need_no_weights(empty_caches, no_network):
    net, choice = resolve_image_backbone("resnet50", pretrained=False)
    assert not choice.pretrained and choice.source == "random initialisation"
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    model, tokenizer, choice = resolve_text_backbone("tiny_distilbert")
    assert not choice.pretrained and model.config.n_layers == 2


def test_auto_fallback_warns_one_short_line_per_backbone(empty_caches, no_network, caplog, capfd):
    """Offline, each fallback is one warning line (asked, used, why); no downloader line, URL or error dump."""
    with caplog.at_level(logging.DEBUG, logger="encoders.backbones"):
        resolve_image_backbone("auto")
        resolve_text_backbone("auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    for line, used, design in zip(warnings, ("mobilenet_v2", "all-MiniLM-L6-v2"),
                                  ("resnet50", "distilbert-base-uncased")):
        assert "\n" not in line and len(line) < 220, line
        assert f"using offline {used} instead of design-card {design}" in line
        assert "unreachable" in line
        assert "http" not in line and "Error" not in line and "Traceback" not in line
    # the full message with the fix is still there, at DEBUG (shown with -v)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("resnet50-11ad3fa6.pth" in line for line in debug)
    assert any("huggingface-cli download" in line for line in debug)
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err  # torch.hub's line for a download that cannot happen


def test_reachable_refused_connection_is_false_unless_proxied(no_network, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not backbones.reachable("https://download.pytorch.org/models/x.pth")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert backbones.reachable("https://download.pytorch.org/models/x.pth")  # the proxy decides: let it try
