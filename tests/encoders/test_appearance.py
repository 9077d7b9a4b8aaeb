"""The photo vectors' appearance signature: the colour histogram and its combination with the backbone vector."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from encoders.appearance import (
    COLOUR_BINS,
    COLOUR_DIM,
    COLOUR_WEIGHT,
    AppearancePixels,
    appearance_vectors,
    colour_signature,
    colour_signatures,
    photo_vector_dim,
)


def _photo(seed: int, size=(96, 80)) -> Image.Image:
    """An item on a background: two colours, a soft gradient and a little noise."""
    rng = np.random.default_rng(seed)
    background, item = rng.integers(30, 226, size=(2, 3))
    pixels = np.tile(background, (size[1], size[0], 1)).astype(np.float64)
    pixels[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = item
    pixels += np.linspace(-20, 20, size[0])[None, :, None] + rng.normal(0, 4, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def test_colour_signature_is_the_square_rooted_hsv_histogram():
    red = Image.new("RGB", (40, 30), (255, 0, 0))  # HSV (0, 255, 255): hue bin 0, saturation and value bin 7
    signature = colour_signature(red)
    assert signature.shape == (COLOUR_DIM,) and signature.dtype == np.float32
    expected = np.zeros(COLOUR_DIM, np.float32)
    expected[(0 * COLOUR_BINS + 7) * COLOUR_BINS + 7] = 1
    np.testing.assert_array_equal(signature, expected)

    half = Image.new("RGB", (64, 64), (255, 0, 0))
    half.paste((0, 0, 0), (0, 0, 64, 32))  # black: HSV (0, 0, 0), bin 0; half the pixels each
    signature = colour_signature(half)
    assert signature[0] == pytest.approx(np.sqrt(0.5), abs=1e-6) and signature[63] == pytest.approx(np.sqrt(0.5),
                                                                                                       abs=1e-6)
    assert np.linalg.norm(signature) == pytest.approx(1, abs=1e-6)


def test_colour_signature_keeps_a_reencoded_photo_and_separates_another():
    photo = _photo(0)
    same = colour_signature(photo) @ colour_signature(_jpeg(photo.resize((120, 100))))
    other = colour_signature(photo) @ colour_signature(_photo(1))
    assert same > 0.9 > 0.5 > other
    assert colour_signature(photo.convert("L")) @ colour_signature(photo.convert("L").convert("RGB")) == (
        pytest.approx(1, abs=1e-6))  # any mode is read as RGB
    with pytest.raises(ValueError, match="PIL"):
        colour_signature(np.zeros((8, 8, 3), np.uint8))
    assert colour_signatures([]).shape == (0, COLOUR_DIM)


def test_the_photo_vector_cosine_is_the_weighted_sum_of_the_two_cosines():
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(5, 32)).astype(np.float32) * rng.uniform(0.1, 9, size=(5, 1)).astype(np.float32)
    colour = np.abs(rng.normal(size=(5, COLOUR_DIM))).astype(np.float32)
    vectors = appearance_vectors(pooled, colour)
    assert vectors.shape == (5, photo_vector_dim(32)) == (5, 32 + COLOUR_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)

    def cosines(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    expected = (cosines(pooled) + COLOUR_WEIGHT * cosines(colour)) / (1 + COLOUR_WEIGHT)
    np.testing.assert_allclose(vectors @ vectors.T, expected, atol=1e-5)
    np.testing.assert_allclose(appearance_vectors(pooled, colour, weight=0)[:, 32:], 0)
    with pytest.raises(ValueError, match="colour"):
        appearance_vectors(pooled, colour[:, :10])
    with pytest.raises(ValueError, match="weight"):
        appearance_vectors(pooled, colour, weight=-1)


def test_the_decoding_workers_transform_gives_pixels_and_colour_from_one_decode():
    from encoders.pixels import EvalPixels

    pixels = EvalPixels({"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    transform = pickle.loads(pickle.dumps(AppearancePixels(pixels)))  # it travels to the worker processes
    photo = _photo(3)
    got_pixels, got_colour = transform(photo)
    np.testing.assert_array_equal(got_pixels, pixels(photo))
    np.testing.assert_array_equal(got_colour, colour_signature(photo))
    transform.worker_init()  # EvalPixels has none: nothing to do


def test_the_colour_signature_needs_no_torch():
    code = "import sys, encoders.appearance; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
