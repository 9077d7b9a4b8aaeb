"""Symmetric contrastive loss (InfoNCE) with a learnable temperature, as in open_clip's ClipLoss, extended
with several positives per text (every photo of a listing) and extra negatives from a queue of recent
embeddings (cross-batch memory, Wang et al. 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def multi_positive_cross_entropy(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum of the positives' softmax probabilities); with one positive per row it
    is ``F.cross_entropy``. Every row needs at least one positive."""
    positives = logits.masked_fill(~positive, -math.inf)
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positives, dim=1)).mean()


@dataclass
class QueuedNegatives:
    """Embeddings of earlier batches, used as extra negatives: image rows with the listing id of each, and
    text rows with theirs. A row of the same listing as a batch row is masked out (it is no negative)."""

    image: torch.Tensor  # (qi, d)
    image_ids: torch.Tensor  # (qi,) int64
    text: torch.Tensor  # (qt, d)
    text_ids: torch.Tensor  # (qt,) int64


class EmbeddingQueue:
    """First-in first-out memory of the last ``size`` image and text embeddings (detached) and their ids."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"the queue size must be >= 1, got {size}")
        self.size = int(size)
        self.image = self.text = None
        self.image_ids = self.text_ids = None

    def negatives(self) -> QueuedNegatives | None:
        if self.image is None:
            return None
        return QueuedNegatives(self.image, self.image_ids, self.text, self.text_ids)

    def push(self, image: torch.Tensor, image_ids: torch.Tensor, text: torch.Tensor, text_ids: torch.Tensor) -> None:
        def keep(old, new):
            new = new.detach()
            return new[-self.size:] if old is None else torch.cat([old, new])[-self.size:]

        self.image, self.image_ids = keep(self.image, image), keep(self.image_ids, image_ids)
        self.text, self.text_ids = keep(self.text, text), keep(self.text_ids, text_ids)


class ClipLoss(nn.Module):
    """Mean of image->text and text->image cross-entropy over the in-batch similarity matrix.

    By default row ``i`` of ``image_features`` and ``text_features`` belong to the same listing (the positive
    pair) and every other row in the batch is a negative. With ``owner`` (one text row per image row) there
    may be several images per text: image->text has one positive, text->image counts every image of the row
    as a positive (multi-positive InfoNCE). ``ids`` (the listing id of each text row) and ``queue`` add the
    queued embeddings as negatives in both directions. Features are expected L2-normalised. The temperature
    is learned as ``logit_scale = log(1 / T)``, initialised to ``1 / init_temperature`` and clamped at
    ``max_scale`` (100, as in CLIP) for stability.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True):
        super().__init__()
        if not 0 < init_temperature:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        value = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        self.logit_scale = nn.Parameter(value, requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, owner: torch.Tensor | None = None,
                ids: torch.Tensor | None = None, queue: QueuedNegatives | None = None) -> torch.Tensor:
        n = text_features.shape[0]
        if owner is None:
            if image_features.shape != text_features.shape:
                raise ValueError(
                    f"image and text features must have the same shape (one pair per row), got "
                    f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
                )
            owner = torch.arange(n, device=text_features.device)
        elif owner.shape != (image_features.shape[0],) or (n and set(owner.unique().tolist()) != set(range(n))):
            raise ValueError(f"owner must give each of the {image_features.shape[0]} image rows its text row, "
                             f"and every one of the {n} text rows needs at least one image")
        logits_per_text = self.scale * text_features @ image_features.T  # (n, m)
        positive = owner.unsqueeze(0) == torch.arange(n, device=owner.device).unsqueeze(1)
        logits_per_image, positive_per_image = logits_per_text.T, positive.T
        if queue is not None:
            if ids is None:
                raise ValueError("queued negatives need the listing ids of the batch rows (ids)")
            text_vs_queue = (self.scale * text_features @ queue.image.T).masked_fill(
                ids.unsqueeze(1) == queue.image_ids.unsqueeze(0), -math.inf)
            image_vs_queue = (self.scale * image_features @ queue.text.T).masked_fill(
                ids[owner].unsqueeze(1) == queue.text_ids.unsqueeze(0), -math.inf)
            logits_per_text = torch.cat([logits_per_text, text_vs_queue], dim=1)
            positive = F.pad(positive, (0, text_vs_queue.shape[1]), value=False)
            logits_per_image = torch.cat([logits_per_image, image_vs_queue], dim=1)
            positive_per_image = F.pad(positive_per_image, (0, image_vs_queue.shape[1]), value=False)
        return (multi_positive_cross_entropy(logits_per_image, positive_per_image)
                + multi_positive_cross_entropy(logits_per_text, positive)) / 2


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE with a fixed temperature: row ``i`` of ``queries`` and ``keys`` (L2-normalised) is a
    positive pair, every other row of the batch a negative."""
    logits = queries @ keys.T / temperature
    target = torch.arange(len(queries), device=queries.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
