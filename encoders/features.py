"""Disk cache of frozen-backbone features (backbone + pooling output), computed once per backbone.

The default training profile freezes both backbones, so their pooled outputs never change: they are
computed once (with a progress bar), stored under ``<workspace>/cache/features/<backbone key>/`` and
reused by every later run with the same backbone, weights and preprocessing. Entries are keyed by the
caller (image id + file size, or a hash of the text), so a grown catalogue only computes what is new.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from core.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)


def backbone_key(tower) -> str:
    """Identifies what a tower's trunk computes: architecture, preprocessing, pooling and weights.

    Provenance (where the weights came from, why a fallback was taken) is left out on purpose: the same
    weights reached by another route give the same features.
    """
    digest = hashlib.sha256()
    digest.update(tower.modality.encode())
    backbone = tower.backbone
    described = {"name": backbone.name, "pooling": tower.pooling.get_config_dict()}
    if tower.modality == "image":
        described["preprocessing"] = backbone.get_config_dict()["preprocessing"]
        described["resized"] = "as PIL images"  # since the served model's pixels (encoders.pixels); was tensors
        if backbone.mid_block is not None:  # keys of nets without mid-level features are unchanged
            described["mid_block"] = backbone.mid_block
    else:
        described["max_length"] = backbone.max_length
        described["tokenizer"] = type(backbone.tokenizer).__name__
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    import torch

    for name, tensor in sorted(backbone.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    name = str(backbone.name).replace("/", "_")[-40:]
    return f"{tower.modality}-{name}-{digest.hexdigest()[:16]}"


def photo_key(image_id: str, path: Path) -> str:
    """Cache key of a photo file: its id and byte size (a replaced file gets a new key)."""
    return f"{image_id}:{Path(path).stat().st_size}"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class FeatureCache:
    """keys -> float32 rows, stored as ``features.npy`` + ``keys.json`` (both written atomically)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.keys: list[str] = []
        self.features: np.ndarray | None = None
        if (self.folder / "keys.json").is_file() and (self.folder / "features.npy").is_file():
            keys = json.loads((self.folder / "keys.json").read_text())
            features = np.load(self.folder / "features.npy")
            if len(keys) == len(features):
                self.keys, self.features = keys, features
            else:
                logger.warning("feature cache %s is inconsistent (%d keys, %d rows); recomputing",
                               self.folder, len(keys), len(features))
        self.row_of = {key: row for row, key in enumerate(self.keys)}

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [key for key in dict.fromkeys(keys) if key not in self.row_of]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self.features[[self.row_of[key] for key in keys]]

    def add(self, keys: list[str], features: np.ndarray) -> None:
        features = np.asarray(features, np.float32)
        self.features = features if self.features is None else np.concatenate([self.features, features])
        for key in keys:
            self.row_of[key] = len(self.keys)
            self.keys.append(key)
        self.save()

    def save(self) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, self.features)

        # keys last: a crash in between leaves a count mismatch, which the loader detects and discards
        write_atomic(self.folder / "features.npy", write)
        write_json_atomic(self.folder / "keys.json", self.keys)


def cached_pooled_features(tower, cache_root: Path, keys: Sequence[str], load: Callable[[str], object],
                           batch_size: int = 32, chunk: int = 256, progress: bool = True) -> np.ndarray:
    """Pooled backbone features (float32 (len(keys), pooled_dim)) for ``keys``, computing missing ones.

    ``load(key)`` returns the raw input of one key (a PIL image or a string). Missing keys are computed
    in chunks and appended to the cache after each chunk, so an interrupted run keeps its progress.
    """
    cache = FeatureCache(Path(cache_root) / backbone_key(tower))
    missing = cache.missing(keys)
    if missing:
        logger.info("computing %d %s backbone features (cache %s)", len(missing), tower.modality, cache.folder)
        bar = tqdm(total=len(missing), desc=f"{tower.modality} features", unit=tower.modality, disable=not progress)
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            items = [load(key) for key in part]
            features = tower.encode_pooled(items, batch_size=batch_size)
            cache.add(part, features)
            bar.update(len(part))
        bar.close()
    return cache.get(list(keys))
