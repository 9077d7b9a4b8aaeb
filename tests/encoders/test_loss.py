"""ClipLoss on inputs whose value can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.loss import ClipLoss, EmbeddingQueue, QueuedNegatives, info_nce


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


def test_several_photos_per_text_count_every_photo_as_a_positive():
    # texts t0, t1; photos p0, p1 of t0 and p2 of t1; temperature 1 -> scale 1
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    owner = torch.tensor([0, 0, 1])
    loss = ClipLoss(init_temperature=1.0, learnable=False)(image, text, owner=owner)
    sims = text @ image.T  # (2, 3)
    # text -> image: -log of the summed probability of the text's own photos
    per_text = [torch.logsumexp(sims[0], 0) - torch.logsumexp(sims[0, :2], 0),
                torch.logsumexp(sims[1], 0) - sims[1, 2]]
    # image -> text: each photo has its one listing text as the positive
    per_image = [torch.logsumexp(sims[:, j], 0) - sims[owner[j], j] for j in range(3)]
    expected = (sum(per_text) / 2 + sum(per_image) / 3) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # a text with no photo is refused
    with pytest.raises(ValueError, match="owner"):
        ClipLoss()(image, text, owner=torch.tensor([0, 0, 0]))


def test_queued_embeddings_are_negatives_except_those_of_the_same_listing():
    torch.manual_seed(2)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(4, 8), dim=1)
    ids = torch.tensor([10, 11, 12, 13])
    loss_fn = ClipLoss(learnable=False)
    in_batch = loss_fn(image, text, ids=ids)
    assert in_batch.item() == pytest.approx(loss_fn(image, text).item(), rel=1e-6)
    # one listing with two photos: nothing in the batch to confuse it with, the loss is 0; queued rows of the
    # same listing are masked out (still 0), rows of another listing are negatives (> 0)
    owner, one = torch.tensor([0, 0]), torch.tensor([10])
    assert loss_fn(image[:2], text[:1], owner=owner, ids=one).item() == pytest.approx(0.0, abs=1e-6)
    own = QueuedNegatives(image[2:], torch.tensor([10, 10]), text[1:], torch.tensor([10, 10, 10]))
    assert loss_fn(image[:2], text[:1], owner=owner, ids=one, queue=own).item() == pytest.approx(0.0, abs=1e-6)
    other = QueuedNegatives(image[:2], torch.tensor([11, 11]), text[:1], torch.tensor([11]))  # a duplicate listing
    assert loss_fn(image[:2], text[:1], owner=owner, ids=one, queue=other).item() > 0.5
    # queued rows of other listings are extra negatives: the loss grows, by the hand-computed amount
    queue = EmbeddingQueue(size=3)
    queue.push(image[:2], torch.tensor([20, 21]), text[:2], torch.tensor([20, 21]))
    queue.push(image[2:], torch.tensor([22, 23]), text[2:], torch.tensor([22, 23]))
    negatives = queue.negatives()
    assert negatives.image_ids.tolist() == [21, 22, 23]  # first in, first out
    with_queue = loss_fn(image, text, ids=ids, queue=negatives)
    s = loss_fn.scale
    positive = s * (text * image).sum(1)
    per_text = torch.logsumexp(torch.cat([s * text @ image.T, s * text @ image[1:].T], 1), 1) - positive
    per_image = torch.logsumexp(torch.cat([s * image @ text.T, s * image @ text[1:].T], 1), 1) - positive
    assert with_queue.item() == pytest.approx(((per_text.mean() + per_image.mean()) / 2).item(), rel=1e-5)
    assert with_queue > in_batch


def test_info_nce_is_the_fixed_temperature_clip_loss_and_prefers_matched_rows():
    torch.manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    keys = torch.nn.functional.normalize(queries + 0.3 * torch.randn(6, 8), dim=1)
    expected = ClipLoss(init_temperature=0.05, learnable=False)(queries, keys)
    assert info_nce(queries, keys).item() == pytest.approx(expected.item(), rel=1e-5)
    assert info_nce(queries, keys) < info_nce(queries, keys.roll(1, dims=0))
    # orthogonal pairs, temperature 0.5: log(1 + e^-2), as for ClipLoss above
    assert info_nce(torch.eye(2), torch.eye(2), 0.5).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
