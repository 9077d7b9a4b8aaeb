"""A photo's appearance signature: its raw backbone vector and its colour histogram, in one unit vector.

Listing photos of the same item share colours, background and light that ImageNet features largely ignore. The
*photo vector* behind the re-ranker's ``photo_sim`` (``encoders.embed``: stored per listing, computed for a query
photo, by the live follower and by evaluation) is therefore the concatenation of the unit pooled backbone vector
and ``sqrt(COLOUR_WEIGHT)`` times the unit colour signature, re-normalised: the cosine of two such vectors is
``(cos_backbone + COLOUR_WEIGHT * cos_colour) / (1 + COLOUR_WEIGHT)``.

The pooled backbone vector is whatever the image tower pools: with MobileNetV2's mid-level features (the default
since they exist, ``encoders.backbones.MobileNetV2Trunk``) its final map and its block 16, 1,440 values, else the
final map's 1,280.

The colour signature: the photo resized to 64 x 64, in HSV, an 8 x 8 x 8 joint histogram (512 bins), square-rooted
(the Hellinger embedding: the dot product of two of them is the Bhattacharyya coefficient) and L2-normalised.
On the dev catalogue (docs/benchmarks.md, "Known-item levers") frozen MobileNetV2 alone reached 0.483 MRR@10 on
leave-one-out photo queries, the colour signature alone 0.448 and the sum with weight 0.5 0.618; RGB histograms
and spatial grids did worse. numpy and PIL only: the serving process and `marketsearch embed` run without torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

COLOUR_SIZE = 64  # pixels a side the photo is resized to before counting
COLOUR_BINS = 8  # per HSV channel
COLOUR_DIM = COLOUR_BINS**3
COLOUR_WEIGHT = 0.5  # of cos_colour against cos_backbone in the photo vector's cosine
# The recipe of the stored photo vectors. It changes their dimension (pooled_dim + COLOUR_DIM), which is what
# `marketsearch embed` and the serving processes check: vectors of another recipe are re-encoded, never mixed.
PHOTO_VECTOR_RECIPE = f"backbone+hsv{COLOUR_BINS}x{COLOUR_BINS}x{COLOUR_BINS}@{COLOUR_SIZE}:w{COLOUR_WEIGHT}"


def colour_signature(image: Image.Image) -> np.ndarray:
    """float32 (COLOUR_DIM,): the square-rooted, L2-normalised 8 x 8 x 8 HSV histogram of ``image`` at 64 x 64."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    hsv = np.asarray(rgb.resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BICUBIC).convert("HSV"), np.int64)
    cells = hsv // (256 // COLOUR_BINS)
    flat = (cells[..., 0] * COLOUR_BINS + cells[..., 1]) * COLOUR_BINS + cells[..., 2]
    counts = np.bincount(flat.ravel(), minlength=COLOUR_DIM).astype(np.float32)
    signature = np.sqrt(counts / counts.sum())
    return signature / np.float32(np.linalg.norm(signature))


def colour_signatures(images) -> np.ndarray:
    """float32 (n, COLOUR_DIM): ``colour_signature`` of each image."""
    return np.stack([colour_signature(image) for image in images]) if len(images) else np.zeros((0, COLOUR_DIM),
                                                                                                np.float32)


def photo_vector_dim(pooled_dim: int) -> int:
    """The dimension of a photo vector made from a backbone of ``pooled_dim`` outputs."""
    return int(pooled_dim) + COLOUR_DIM


def appearance_vectors(pooled: np.ndarray, colour: np.ndarray, weight: float = COLOUR_WEIGHT) -> np.ndarray:
    """float32 (n, pooled_dim + COLOUR_DIM) photo vectors: [unit pooled, sqrt(weight) * unit colour], normalised.

    ``pooled``: float32 (n, pooled_dim) raw backbone outputs; ``colour``: (n, COLOUR_DIM) colour signatures."""
    pooled, colour = np.asarray(pooled, np.float32), np.asarray(colour, np.float32)
    if pooled.ndim != 2 or colour.shape != (len(pooled), COLOUR_DIM):
        raise ValueError(f"expected pooled (n, p) and colour (n, {COLOUR_DIM}), got {pooled.shape} and {colour.shape}")
    if weight < 0:
        raise ValueError(f"the colour weight must be >= 0, got {weight}")
    both = np.concatenate([_unit(pooled), np.float32(np.sqrt(weight)) * _unit(colour)], axis=1)
    return _unit(both)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class AppearancePixels:
    """A decoding workers' transform (``encoders.photo_stream``): a photo -> (the image tower's pixels, its colour
    signature), so one decode serves both. Picklable when ``pixels`` is."""

    def __init__(self, pixels):
        self.pixels = pixels

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        return self.pixels(image), colour_signature(image)

    def worker_init(self) -> None:
        worker_init = getattr(self.pixels, "worker_init", None)
        if worker_init is not None:
            worker_init()
