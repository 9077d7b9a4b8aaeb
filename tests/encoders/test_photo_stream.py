"""Photos decoded in worker processes (encoders.photo_stream): in order, the inline pixels, unreadable files
reported, whatever the decoding window."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.photo_stream import DECODER_CRASHED, photo_pixels
from encoders.pixels import EvalPixels

PREPROCESSING = {"resize": 40, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "interpolation": "bilinear"}


@pytest.fixture
def paths(tmp_path):
    rng = np.random.default_rng(3)
    out = []
    for i in range(11):
        path = tmp_path / f"{i}.png"
        if i == 4:
            path.write_bytes(b"not a photo")
        elif i == 7:
            path = tmp_path / "missing.jpg"
        else:
            Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


@pytest.mark.parametrize(("workers", "ahead"), [(1, None), (2, 1), (2, 3), (2, 100)])
def test_workers_give_the_inline_pixels_in_order_and_the_same_failures(paths, workers, ahead):
    transform = EvalPixels(PREPROCESSING)
    inline = list(photo_pixels(paths, transform, workers=0))
    pooled = list(photo_pixels(paths, transform, workers=workers, ahead=ahead))
    assert len(pooled) == len(inline) == len(paths)
    for (got, got_reason), (want, want_reason) in zip(pooled, inline):
        assert got_reason == want_reason
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)
    failures = [reason for _, reason in inline if reason is not None]
    assert len(failures) == 2 and any("missing.jpg" in reason for reason in failures)
    assert pooled[0][0].shape == (3, 32, 32) and pooled[0][0].dtype == np.float32


def test_a_stream_closed_early_stops_its_workers(paths):
    stream = photo_pixels(paths, EvalPixels(PREPROCESSING), workers=2, ahead=2)
    first = next(stream)
    assert first[1] is None
    stream.close()  # the executor shuts down; nothing hangs
    with pytest.raises(StopIteration):
        next(stream)
    with pytest.raises(ValueError, match="workers"):
        photo_pixels(paths, EvalPixels(PREPROCESSING), workers=-1)


KILLED_PARENT = """
import multiprocessing, socket, sys, time
from pathlib import Path
from encoders.photo_stream import photo_pixels
from encoders.pixels import EvalPixels
PREPROCESSING = {preprocessing!r}
listener = socket.create_server(("127.0.0.1", 0))
paths = [Path(p) for p in sys.argv[1:]] * 50
stream = photo_pixels(paths, EvalPixels(PREPROCESSING), workers=2, ahead=4)
next(stream)
print(listener.getsockname()[1], *[child.pid for child in multiprocessing.active_children()], flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="Linux: prctl and /proc")
def test_workers_of_a_killed_process_die_and_free_its_port(paths):
    """A server killed (-9) while its catalogue encoding decodes photos: its workers must not outlive it, nor keep
    its listening port bound (a restart on the same port failed with 'already in use')."""
    readable = [str(path) for path in paths if path.suffix == ".png" and path.stat().st_size > 100]
    code = KILLED_PARENT.format(preprocessing=PREPROCESSING)
    parent = subprocess.Popen([sys.executable, "-c", code, *readable], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        port, *workers = (int(field) for field in parent.stdout.readline().split())
    finally:
        parent.kill()
        parent.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    try:
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers)
        socket.create_server(("127.0.0.1", port)).close()  # the port is free again
    finally:
        for pid in filter(_alive, workers):  # a failing run leaves no orphans behind
            os.kill(pid, signal.SIGKILL)


class CrashOnHeight:
    """A transform whose decoding worker dies (the whole process) on photos of one height, as it would if the
    decoder crashed on a hostile file; picklable for the workers."""

    def __init__(self, height: int):
        self.height, self.pixels = height, EvalPixels(PREPROCESSING)

    def __call__(self, image):
        if image.height == self.height:
            os._exit(3)
        return self.pixels(image)


@pytest.mark.parametrize("workers, ahead", [(1, 1), (2, 3), (2, 16)])
def test_a_photo_that_kills_its_worker_is_reported_and_the_stream_goes_on(paths, workers, ahead):
    readable = [path for path in paths if path.suffix == ".png" and path.stat().st_size > 100]
    crashing = readable.index(paths[6])  # 36 pixels high
    twice = readable + readable  # the crash happens again after the pool was replaced
    expected = list(photo_pixels(twice, EvalPixels(PREPROCESSING), workers=0))
    got = list(photo_pixels(twice, CrashOnHeight(36), workers=workers, ahead=ahead))
    assert len(got) == len(twice)
    for i, ((pixels, reason), (want, _)) in enumerate(zip(got, expected)):
        if i % len(readable) == crashing:
            assert pixels is None and reason == DECODER_CRASHED
        else:  # every other photo, in flight with it or after it, decoded as inline
            assert reason is None and np.array_equal(pixels, want)
