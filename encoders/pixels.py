"""A photo's pixel values for the image tower, with PIL and numpy only: the eval transform of
``encoders.modules.ImageBackbone.transforms`` (resize the shorter side, centre crop, scale to [0, 1],
normalise per channel), for the served model, which starts without torch or torchvision."""

from __future__ import annotations

import numpy as np
from PIL import Image

# torchvision's InterpolationMode values -> PIL resampling filters
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
              "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def resized(image: Image.Image, shorter: int, interpolation: str = "bilinear") -> Image.Image:
    """``image`` with its shorter side ``shorter`` pixels and the longer one scaled (truncated), as torchvision's
    ``Resize(int)`` computes it; the image itself when it already has that size."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size == (width, height):
        return image
    return image.resize(size, resample=RESAMPLING[interpolation])


def center_cropped(pixels: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` of uint8 (H, W, C) pixels, zero-padded first where smaller (torchvision's
    ``CenterCrop``)."""
    height, width = pixels.shape[:2]
    if crop > height or crop > width:
        top, left = max(crop - height, 0), max(crop - width, 0)
        pixels = np.pad(pixels, ((top // 2, (top + 1) // 2), (left // 2, (left + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return pixels[top : top + crop, left : left + crop]


class EvalPixels:
    """A photo's float32 (3, crop, crop) pixel values under a backbone's ``preprocessing``
    (``encoders.backbones.ImagePreprocessing`` as a dict); picklable, for the catalogue's decoding workers
    (``encoders.photo_stream``)."""

    def __init__(self, preprocessing: dict):
        self.preprocessing = dict(preprocessing)
        self.crop, self.resize = int(preprocessing["crop"]), int(preprocessing["resize"])
        self.interpolation = preprocessing.get("interpolation", "bilinear")
        mean = np.asarray(preprocessing["mean"], np.float32).reshape(3, 1)
        std = np.asarray(preprocessing["std"], np.float32).reshape(3, 1)
        # every uint8 value's normalised float per channel: one table lookup a pixel instead of three passes
        # over a strided array (0.3 against 1.1 ms for a 224 px photo)
        self.table = (np.arange(256, dtype=np.float32) * np.float32(1 / 255) - mean) / std

    def __call__(self, image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        rgb = resized(rgb, self.resize, self.interpolation)
        pixels = center_cropped(np.asarray(rgb), self.crop)
        out = np.empty((3, self.crop, self.crop), np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return out

    def stack(self, images: list) -> np.ndarray:
        """float32 (n, 3, crop, crop) pixel values of PIL ``images``."""
        out = np.empty((len(images), 3, self.crop, self.crop), np.float32)
        for row, image in enumerate(images):
            out[row] = self(image)
        return out
