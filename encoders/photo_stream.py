"""Catalogue photos decoded and preprocessed in worker processes, in order, for batched forwards.

Decoding a JPEG and resizing it costs about a third of MobileNetV2's forward pass on it; done inline, the
catalogue encoding ran at a fraction of the backbone's speed. ``photo_pixels`` runs the image tower's eval
transform (a picklable ``PIL image -> float32 (3, H, W)`` callable: ``encoders.pixels.EvalPixels`` for the graphs,
``encoders.towers.TorchEvalPixels`` for torch) in ``workers`` processes (0: in this process) and yields each
photo's pixels or the reason it could not be read, in input order and a bounded number ahead of the consumer, so
the caller batches them exactly as the inline path did. No torch here: the
graph path of `marketsearch embed` runs without it.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

PREFETCH_PER_WORKER = 8
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)

Transform = Callable[[Image.Image], np.ndarray]


def load_photo(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def pixels_or_reason(path: Path, transform: Transform) -> tuple[np.ndarray | None, str | None]:
    """``transform(photo)`` of the file at ``path``, or the reason it failed (a missing, truncated or hostile file)."""
    try:
        return transform(load_photo(path)), None
    except UNREADABLE as error:
        return None, f"{type(error).__name__}: {error}"


_worker_transform: Transform | None = None


def _set_transform(transform: Transform) -> None:
    global _worker_transform
    _worker_transform = transform
    worker_init = getattr(transform, "worker_init", None)  # e.g. torch's thread pool, which a forked child must reset
    if worker_init is not None:
        worker_init()


def _worker_pixels(path: Path) -> tuple[np.ndarray | None, str | None]:
    return pixels_or_reason(path, _worker_transform)


def _context():
    # fork: a worker starts in milliseconds and inherits the transform; it only decodes and resizes (no
    # ONNX Runtime or torch calls), so the parent's threads do not matter. spawn where fork does not exist.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def photo_pixels(paths: Sequence[Path], transform: Transform, workers: int = 1, ahead: int | None = None
                 ) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """(pixels, None) or (None, reason) per path, in order; decoded in ``workers`` processes (0: inline), at most
    ``ahead`` photos ahead of the consumer (default ``PREFETCH_PER_WORKER`` per worker; a consumer that forwards
    batches of n should allow more than n, or the workers idle during each forward). The processes start at the
    first item asked for and stop when the iterator is exhausted or closed; a worker that dies (a decoder crash)
    raises ``concurrent.futures.process.BrokenProcessPool`` here."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not paths:
        return iter(())
    if workers == 0:
        return (pixels_or_reason(path, transform) for path in paths)
    return _pooled(list(paths), transform, workers, max(ahead or workers * PREFETCH_PER_WORKER, workers))


def _pooled(paths: list[Path], transform: Transform, workers: int, ahead: int) -> Iterator:
    executor = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_set_transform, initargs=(transform,))
    try:
        remaining = iter(paths)
        pending = deque(executor.submit(_worker_pixels, path) for path in islice(remaining, ahead))
        while pending:
            result = pending.popleft().result()
            following = next(remaining, None)
            if following is not None:
                pending.append(executor.submit(_worker_pixels, following))
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
