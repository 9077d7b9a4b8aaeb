"""The text tower's ONNX Runtime path: same embeddings as torch, torch for training, clear failures."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

import encoders.backbones as backbones
from encoders.backbones import TextRuntimeError
from encoders.towers import build_image_tower, build_text_tower

TEXTS = [
    "red bike",
    "oak dining table with four chairs, some scratches on the top, collection only from the north of town",
    "x",
    "Sony PS5 controller CFI-ZCT1W",
    "sofa " * 100,  # longer than max_length: truncated the same way in both runtimes
]


@pytest.fixture(scope="module")
def towers():
    """(torch tower, ONNX Runtime tower) with the same random weights."""
    torch.manual_seed(0)
    tower, _ = build_text_tower("tiny_distilbert", pretrained=False, embed_dim=32, hidden_dim=64, max_length=48)
    tower.eval()
    fast = copy.deepcopy(tower)
    fast.use_onnxruntime(threads=1)
    return tower, fast


def test_onnxruntime_gives_the_torch_embeddings(towers):
    tower, fast = towers
    assert tower.backbone.runtime == "torch" and fast.backbone.runtime == "onnxruntime"
    for batch_size in (1, 2, len(TEXTS)):  # single queries and padded batches
        want = tower.encode(TEXTS, batch_size=batch_size)
        got = fast.encode(TEXTS, batch_size=batch_size)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.all(np.sum(got * want, axis=1) > 0.99999)


def test_training_forwards_and_copies_stay_in_torch(towers):
    _, fast = towers
    trainee = copy.deepcopy(fast)
    assert trainee.backbone.runtime == "torch"  # a copy carries the weights, not the session
    features = fast.prepare(TEXTS[:2])
    # eval mode with autograd on (e.g. validation inside a training loop): torch, so gradients flow
    out = fast.forward(features)["embedding"]
    assert out.requires_grad
    fast.train()
    try:
        assert fast.backbone.runtime == "torch"  # the session would go stale once the weights change
    finally:
        fast.eval()
        fast.use_onnxruntime(threads=1)


def test_image_tower_has_no_onnxruntime_path():
    tower, _ = build_image_tower("tiny_cnn", pretrained=False, embed_dim=8, hidden_dim=0)
    with pytest.raises(ValueError, match="only the text tower"):
        tower.use_onnxruntime()


def test_missing_onnxruntime_says_how_to_install_it(towers, monkeypatch):
    tower = copy.deepcopy(towers[0])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(TextRuntimeError, match="uv pip install .*onnxruntime"):
        tower.use_onnxruntime()
    assert tower.backbone.runtime == "torch"


def test_an_export_that_differs_from_torch_is_refused(towers, monkeypatch):
    tower = copy.deepcopy(towers[0])
    monkeypatch.setattr(backbones, "ONNX_MAX_ABS_DIFF", -1.0)  # no output can pass the check
    with pytest.raises(TextRuntimeError, match="differs from torch"):
        tower.use_onnxruntime()
    assert tower.backbone.runtime == "torch"
