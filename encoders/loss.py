"""Symmetric contrastive loss (InfoNCE) with a learnable temperature, as in open_clip's ClipLoss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ClipLoss(nn.Module):
    """Mean of image->text and text->image cross-entropy over the in-batch similarity matrix.

    Row ``i`` of ``image_features`` and ``text_features`` belong to the same listing (the positive pair);
    every other row in the batch is a negative. Features are expected L2-normalised. The temperature is
    learned as ``logit_scale = log(1 / T)``, initialised to ``1 / init_temperature`` and clamped at
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

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image and text features must have the same shape (one pair per row), got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        logits_per_image = self.scale * image_features @ text_features.T
        labels = torch.arange(image_features.shape[0], device=image_features.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2
