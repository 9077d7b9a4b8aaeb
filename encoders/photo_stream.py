"""Catalogue photos decoded and preprocessed in worker processes, in order, for batched forwards.

Decoding a JPEG and resizing it costs about as much CPU as MobileNetV2's forward pass on it; done inline, the
catalogue encoding ran at a fraction of the backbone's speed. ``photo_pixels`` runs the tower's eval transform
in ``workers`` torch DataLoader processes (0: in this process) and yields each photo's pixels or the reason it
could not be read, in input order, so the caller batches them exactly as the inline path did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

PREFETCH_PER_WORKER = 8


def load_photo(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


class PhotoPixels(Dataset):
    """``transform(photo)`` of each path, or the reason it failed (a missing, truncated or hostile file)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            return self.transform(load_photo(self.paths[index])), None
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return None, f"{type(error).__name__}: {error}"


def _keep(item):
    return item


def photo_pixels(paths: Sequence[Path], transform, workers: int = 1
                 ) -> Iterator[tuple[torch.Tensor | None, str | None]]:
    """(pixels, None) or (None, reason) per path, in order; decoded in ``workers`` processes (0: inline)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not paths:
        return iter(())
    loader = DataLoader(PhotoPixels(paths, transform), batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_keep, prefetch_factor=PREFETCH_PER_WORKER if workers else None)
    return iter(loader)
