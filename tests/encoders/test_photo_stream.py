"""Photos decoded in worker processes (encoders.photo_stream): in order, the inline pixels, unreadable files
reported, whatever the decoding window."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.photo_stream import photo_pixels
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
