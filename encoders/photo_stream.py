"""Catalogue photos decoded (and transformed) in worker processes, in order, a bounded number ahead.

Decoding a JPEG and resizing it costs about a third of MobileNetV2's forward pass on it; done inline, the
catalogue encoding ran at a fraction of the backbone's speed. ``photo_pixels`` runs a picklable per-photo
transform in ``workers`` processes (0: in this process) and yields each photo's result or the reason it could not be
read, in input order and a bounded number ahead of the consumer. The transforms `embed` uses
(``encoders.embed.photo_transform``): the image tower's eval transform (``PIL image -> float32 (3, H, W)``:
``encoders.pixels.EvalPixels``, ``encoders.towers.TorchEvalPixels`` for torch), whose pixels the caller batches for
its forwards, or the whole photo encode on the graph path (``encoders.served.PhotoGraphEncoder``). No torch here:
the graph path of `marketsearch embed` runs without it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import stat
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PREFETCH_PER_WORKER = 8
# photos a worker takes per task: with the image graph in the workers, one round trip for 8 photos gave about 18 %
# more photos/s than one for each on 2 cores (docs/benchmarks.md, "Thirteenth session")
CHUNK = 8
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)

Transform = Callable[[Image.Image], np.ndarray]


# The reason given for a photo whose decoding worker died on it alone: a decoder crash on a corrupt or hostile
# file (or a worker killed from outside, twice).
DECODER_CRASHED = "the decoder crashed on this file (its worker process died)"


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
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _init_worker(transform: Transform, parent: int) -> None:
    global _worker_transform
    _die_with(parent)
    _release_inherited_sockets()
    _worker_transform = transform
    worker_init = getattr(transform, "worker_init", None)  # e.g. torch's thread pool, which a forked child must reset
    if worker_init is not None:
        worker_init()


def _die_with(parent: int) -> None:
    """SIGKILL this worker when ``parent`` dies: a worker orphaned by a ``kill -9`` of its parent would wait on
    its task queue forever. The kernel sends it when the *thread* that started the worker ends, which is why the
    stream must be consumed by the thread that began it. Linux only; elsewhere an orphan lingers as before."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _release_inherited_sockets() -> None:
    """Point every socket a forked worker inherited (a server's listening socket, a database connection) at
    /dev/null, keeping the descriptor numbers valid: the worker never uses them, and until it exits it would
    otherwise keep the server's port bound after the server itself was killed."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            if fd > 2 and fd != devnull:
                try:
                    if stat.S_ISSOCK(os.fstat(fd).st_mode):
                        os.dup2(devnull, fd)
                except OSError:  # the listing's own descriptor, closed since
                    pass
    finally:
        os.close(devnull)


def _worker_pixels(path: Path) -> tuple[np.ndarray | None, str | None]:
    return pixels_or_reason(path, _worker_transform)


def _worker_chunk(paths: list[Path]) -> list[tuple[np.ndarray | None, str | None]]:
    return [_worker_pixels(path) for path in paths]


def _context():
    # fork: a worker starts in milliseconds and inherits the transform. It makes no torch calls, and an ONNX Runtime
    # session it needs it opens itself after the fork (encoders.served.PhotoGraphEncoder), so the parent's threads
    # do not matter. spawn where fork does not exist.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def photo_pixels(paths: Sequence[Path], transform: Transform, workers: int = 1, ahead: int | None = None
                 ) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """(pixels, None) or (None, reason) per path, in order; decoded in ``workers`` processes (0: inline), at most
    ``ahead`` photos ahead of the consumer (default ``PREFETCH_PER_WORKER`` per worker; a consumer that forwards
    batches of n should allow more than n, or the workers idle during each forward). A worker takes up to
    ``CHUNK`` photos a task (fewer where ``ahead`` would not keep two tasks a worker in flight): one round trip for
    several photos. The processes start at the
    first item asked for and stop when the iterator is exhausted or closed, or when the thread that asked for the
    first item ends, so consume it from one thread. When a worker dies (a decoder crash), each photo that was in
    flight is decoded again alone in a new worker: the one whose worker dies again gets ``(None,
    DECODER_CRASHED)`` like any unreadable file, the others their pixels, and the stream goes on. The workers
    die with this process (``kill -9`` included) without holding on to its sockets."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not paths:
        return iter(())
    if workers == 0:
        return (pixels_or_reason(path, transform) for path in paths)
    return _pooled(list(paths), transform, workers, max(ahead or workers * PREFETCH_PER_WORKER, workers))


def _pooled(paths: list[Path], transform: Transform, workers: int, ahead: int) -> Iterator:
    size = max(1, min(CHUNK, ahead // (2 * workers)))
    chunks = iter([paths[start : start + size] for start in range(0, len(paths), size)])
    in_flight = max(ahead // size, workers)
    pending: deque = deque()  # (the chunk's paths, its future), oldest first
    while True:
        executor = _pool(transform, workers)
        try:
            pending.extend((chunk, executor.submit(_worker_chunk, chunk)) for chunk in
                           islice(chunks, in_flight - len(pending)))
            while pending:
                try:
                    results = pending[0][1].result()
                except BrokenProcessPool:
                    break
                pending.popleft()
                following = next(chunks, None)
                if following is not None:
                    pending.append((following, executor.submit(_worker_chunk, following)))
                yield from results
            else:
                return
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        # a worker died: the photos in flight are decoded again one at a time, each in a worker of its own
        logger.warning("a photo decoding worker died with %d photos in flight; decoding them one at a time",
                       sum(len(chunk) for chunk, _ in pending))
        while pending:
            chunk, future = pending.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                yield from future.result()
            else:
                yield from (_decode_alone(path, transform) for path in chunk)


def _pool(transform: Transform, workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init_worker,
                               initargs=(transform, os.getpid()))


def _decode_alone(path: Path, transform: Transform) -> tuple[np.ndarray | None, str | None]:
    executor = _pool(transform, 1)
    try:
        return executor.submit(_worker_pixels, path).result()
    except BrokenProcessPool:
        logger.warning("photo %s: %s", path, DECODER_CRASHED)
        return None, DECODER_CRASHED
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
