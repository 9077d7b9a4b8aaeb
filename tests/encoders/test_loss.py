"""ClipLoss on inputs whose value can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.loss import ClipLoss


def test_orthogonal_pairs_give_log_one_plus_exp_minus_scale():
    # two pairs, matched rows identical, mismatched rows orthogonal: logits = s * I (2x2)
    # each row's cross-entropy = -log(e^s / (e^s + e^0)) = log(1 + e^-s), same in both directions
    features = torch.eye(2)
    loss = ClipLoss(init_temperature=0.5, learnable=False)(features, features)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


def test_three_pairs_with_a_confusable_negative():
    # rows: a, b, c with <a,b> = 0.6, everything else orthogonal; temperature 1 -> scale 1
    image = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    text = image.clone()
    sims = image @ text.T
    expected_rows = [-(sims[i, i] - torch.logsumexp(sims[i], 0)) for i in range(3)]
    expected = sum(expected_rows) / 3  # the matrix is symmetric, so both directions agree
    loss = ClipLoss(init_temperature=1.0, learnable=False)(image, text)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand: row a: log(e^1 + e^0.6 + 1) - 1
    assert expected_rows[0].item() == pytest.approx(math.log(math.e + math.exp(0.6) + 1) - 1, rel=1e-6)


def test_loss_is_symmetric_and_the_temperature_learns():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    text = torch.nn.functional.normalize(image + 0.3 * torch.randn(8, 16), dim=1)
    loss_fn = ClipLoss()
    assert loss_fn(image, text).item() == pytest.approx(loss_fn(text, image).item(), rel=1e-6)
    loss_fn(image, text).backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs() > 0
    assert loss_fn.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_aligned_pairs_cost_less_than_shuffled_pairs():
    torch.manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(16, 32), dim=1)
    loss_fn = ClipLoss(learnable=False)
    assert loss_fn(image, image) < loss_fn(image, image[torch.randperm(16)])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="init_temperature"):
        ClipLoss(init_temperature=0.0)
