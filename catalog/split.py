"""Deterministic train/val/test assignment per listing (product level, so no product is on two sides)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def split_of(listing_id: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> str:
    """The split of one listing: a hash of (seed, id) mapped to [0, 1), so it never depends on which other
    listings exist and a growing catalogue keeps its old assignments."""
    digest = hashlib.sha256(f"{seed}:{listing_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_split(
    listing_ids: Iterable[str], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, str]:
    """listing id -> 'train' | 'val' | 'test'. All photos of a listing follow their listing."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must leave room for training, got {val_fraction} + {test_fraction}"
        )
    return {i: split_of(i, seed, val_fraction, test_fraction) for i in listing_ids}
