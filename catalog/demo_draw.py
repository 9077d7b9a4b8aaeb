"""PIL drawings for demo photos: one shape per category, filled with the listing's colour, on a noisy
background with distractors, so category and colour are visible but not trivially separable."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]


def _darker(c: Colour, f: float = 0.55) -> Colour:
    return tuple(int(v * f) for v in c)


def _box(cx: float, cy: float, s: float, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle given in unit coordinates (-1..1) around centre (cx, cy) with half-size s."""
    return [cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, s: float, c: Colour) -> None:
    dark = _darker(c)
    w = max(2, int(s * 0.08))
    if shape == "appliance":  # tall box, door line, round window
        draw.rectangle(_box(cx, cy, s, -0.6, -0.9, 0.6, 0.9), fill=c, outline=dark, width=w)
        draw.line(_box(cx, cy, s, -0.6, -0.55, 0.6, -0.55), fill=dark, width=w)
        draw.ellipse(_box(cx, cy, s, -0.4, -0.3, 0.4, 0.5), fill=dark)
    elif shape == "teddy":  # head, two ears, body
        draw.ellipse(_box(cx, cy, s, -0.5, 0.0, 0.5, 0.95), fill=c)
        draw.ellipse(_box(cx, cy, s, -0.42, -0.75, 0.42, 0.1), fill=c)
        draw.ellipse(_box(cx, cy, s, -0.55, -0.9, -0.25, -0.6), fill=c)
        draw.ellipse(_box(cx, cy, s, 0.25, -0.9, 0.55, -0.6), fill=c)
        draw.ellipse(_box(cx, cy, s, -0.1, -0.35, 0.1, -0.2), fill=dark)
    elif shape == "tshirt":
        pts = [
            (-0.35, -0.8),
            (-0.95, -0.45),
            (-0.75, -0.1),
            (-0.5, -0.3),
            (-0.5, 0.9),
            (0.5, 0.9),
            (0.5, -0.3),
            (0.75, -0.1),
            (0.95, -0.45),
            (0.35, -0.8),
            (0.15, -0.65),
            (-0.15, -0.65),
        ]
        draw.polygon([(cx + x * s, cy + y * s) for x, y in pts], fill=c, outline=dark)
    elif shape == "laptop":  # open screen (coloured lid, dark panel) over a flat base
        draw.rectangle(_box(cx, cy, s, -0.75, -0.8, 0.75, 0.25), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.65, -0.7, 0.65, 0.15), fill=(30, 40, 60))
        base = [(-0.95, 0.45), (0.95, 0.45), (0.75, 0.25), (-0.75, 0.25)]
        draw.polygon([(cx + x * s, cy + y * s) for x, y in base], fill=c, outline=dark)
    elif shape == "hammer":  # handle and head
        draw.rectangle(_box(cx, cy, s, -0.09, -0.45, 0.09, 0.95), fill=(150, 110, 60))
        draw.rectangle(_box(cx, cy, s, -0.7, -0.8, 0.7, -0.45), fill=c, outline=dark, width=w)
    elif shape == "bottle":  # body, neck, cap
        draw.rounded_rectangle(_box(cx, cy, s, -0.45, -0.3, 0.45, 0.95), radius=int(s * 0.2), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.15, -0.65, 0.15, -0.3), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.2, -0.9, 0.2, -0.65), fill=dark)
        draw.rectangle(_box(cx, cy, s, -0.3, 0.1, 0.3, 0.5), fill=(235, 235, 225))
    elif shape == "sofa":  # back, seat, arms
        draw.rectangle(_box(cx, cy, s, -0.8, -0.45, 0.8, 0.2), fill=c, outline=dark, width=w)
        draw.rectangle(_box(cx, cy, s, -0.95, 0.1, 0.95, 0.6), fill=c, outline=dark, width=w)
        draw.rectangle(_box(cx, cy, s, -1.0, -0.15, -0.75, 0.6), fill=dark)
        draw.rectangle(_box(cx, cy, s, 0.75, -0.15, 1.0, 0.6), fill=dark)
        draw.rectangle(_box(cx, cy, s, -0.85, 0.6, -0.75, 0.8), fill=(60, 40, 20))
        draw.rectangle(_box(cx, cy, s, 0.75, 0.6, 0.85, 0.8), fill=(60, 40, 20))
    elif shape == "disc":  # record with a label and hole
        draw.ellipse(_box(cx, cy, s, -0.9, -0.9, 0.9, 0.9), fill=c, outline=dark, width=w)
        draw.ellipse(_box(cx, cy, s, -0.3, -0.3, 0.3, 0.3), fill=(235, 235, 225))
        draw.ellipse(_box(cx, cy, s, -0.07, -0.07, 0.07, 0.07), fill=(10, 10, 10))
    elif shape == "chair":  # back, seat, pole, star base
        draw.rounded_rectangle(_box(cx, cy, s, -0.45, -0.95, 0.45, -0.15), radius=int(s * 0.12), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.55, -0.05, 0.55, 0.15), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.05, 0.15, 0.05, 0.6), fill=(60, 60, 60))
        for dx in (-0.6, -0.3, 0.3, 0.6):
            draw.line([cx, cy + 0.6 * s, cx + dx * s, cy + 0.85 * s], fill=(60, 60, 60), width=w)
    elif shape == "star":
        pts = []
        for i in range(10):
            r = 0.95 if i % 2 == 0 else 0.4
            angle = np.pi / 2 + i * np.pi / 5
            pts.append((cx + r * s * np.cos(angle), cy - r * s * np.sin(angle)))
        draw.polygon(pts, fill=c, outline=dark)
    elif shape == "phone":  # tall rounded body with a screen
        draw.rounded_rectangle(_box(cx, cy, s, -0.42, -0.95, 0.42, 0.95), radius=int(s * 0.15), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.34, -0.75, 0.34, 0.72), fill=(20, 25, 40))
        draw.ellipse(_box(cx, cy, s, -0.06, 0.78, 0.06, 0.9), fill=dark)
    elif shape == "bicycle":  # two wheels and a frame
        for wx in (-0.55, 0.55):
            draw.ellipse(_box(cx, cy, s, wx - 0.4, 0.05, wx + 0.4, 0.85), outline=c, width=max(3, w))
        frame = [(-0.55, 0.45), (-0.1, 0.45), (0.35, -0.1), (-0.25, -0.1), (-0.55, 0.45)]
        draw.line([(cx + x * s, cy + y * s) for x, y in frame], fill=c, width=max(3, w))
        draw.line([cx + 0.35 * s, cy - 0.1 * s, cx + 0.55 * s, cy + 0.45 * s], fill=c, width=max(3, w))
        draw.line([cx + 0.3 * s, cy - 0.35 * s, cx + 0.5 * s, cy - 0.35 * s], fill=dark, width=max(3, w))
    elif shape == "gamepad":  # wide body, grips, d-pad and buttons
        draw.rounded_rectangle(_box(cx, cy, s, -0.8, -0.4, 0.8, 0.25), radius=int(s * 0.2), fill=c)
        draw.ellipse(_box(cx, cy, s, -0.95, -0.2, -0.35, 0.65), fill=c)
        draw.ellipse(_box(cx, cy, s, 0.35, -0.2, 0.95, 0.65), fill=c)
        draw.rectangle(_box(cx, cy, s, -0.6, -0.12, -0.3, -0.02), fill=dark)
        draw.rectangle(_box(cx, cy, s, -0.5, -0.25, -0.4, 0.1), fill=dark)
        for bx, by in ((0.4, -0.2), (0.55, -0.05), (0.4, 0.1), (0.25, -0.05)):
            draw.ellipse(_box(cx, cy, s, bx - 0.06, by - 0.06, bx + 0.06, by + 0.06), fill=dark)
    else:
        raise ValueError(f"unknown demo shape {shape!r}")


SHAPES = (
    "appliance",
    "teddy",
    "tshirt",
    "laptop",
    "hammer",
    "bottle",
    "sofa",
    "disc",
    "chair",
    "star",
    "phone",
    "bicycle",
    "gamepad",
)


def draw_photo(
    shape: str, colour: Colour, rng: random.Random, np_rng: np.random.Generator, size: tuple[int, int]
) -> Image.Image:
    """One listing photo: background (flat/gradient, random tint), 0-3 distractor blobs, the item in its
    colour (jittered) at a random place, scale and rotation, then blur and pixel noise."""
    width, height = size
    bg_a = tuple(rng.randint(60, 235) for _ in range(3))
    bg_b = tuple(min(255, max(0, v + rng.randint(-50, 50))) for v in bg_a)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    background = np.array(bg_a, np.float32) * (1 - ramp) + np.array(bg_b, np.float32) * ramp
    canvas = Image.fromarray(np.broadcast_to(background, (height, width, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(0, 3)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, min(width, height) * 0.15)
        blob = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=blob)

    side = min(width, height)
    layer_size = int(side * 1.2)
    layer = Image.new("RGBA", (layer_size, layer_size), (0, 0, 0, 0))
    jittered = tuple(min(255, max(0, v + rng.randint(-18, 18))) for v in colour)
    item_scale = rng.uniform(0.28, 0.45) * side
    draw_shape(ImageDraw.Draw(layer), shape, layer_size / 2, layer_size / 2, item_scale, jittered)
    layer = layer.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR)
    offset_x = int(width / 2 - layer_size / 2 + rng.uniform(-0.15, 0.15) * width)
    offset_y = int(height / 2 - layer_size / 2 + rng.uniform(-0.15, 0.15) * height)
    canvas.paste(layer, (offset_x, offset_y), layer)

    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += np_rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(4, 18)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
