"""A query photo is prepared exactly as the catalogue photos it is compared with, and its cost does not
depend on its shape (the real demo pipeline: session fixtures `indexed_workspace` + `searcher`)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catalog.images import ImageRejected, clean_image


def upload(client, data: bytes, content_type: str = "image/png"):
    return client.post("/search/image", files={"file": ("photo", data, content_type)}, data={"k": "5"})


def png_bytes(size: tuple[int, int]) -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tower_inputs(demo_state, monkeypatch):
    """What reaches the image tower: the photos it is given and the shape of the pixel tensor it makes of them
    (its backbone's crop: 224 for the design-card and offline backbones, smaller for the test fixtures)."""
    tower = demo_state.searcher.model.image_tower
    seen: list[tuple[list[Image.Image], tuple[int, ...]]] = []
    prepare = tower.prepare

    def spy(items, train=False):
        features = prepare(items, train=train)
        seen.append(([item.copy() for item in items], tuple(features["pixel_values"].shape)))
        return features

    monkeypatch.setattr(tower, "prepare", spy)
    return seen


def crop(searcher) -> tuple[int, int]:
    side = searcher.model.image_tower.backbone.preprocessing["crop"]
    return side, side


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_uploading_a_catalogue_photo_file_gives_its_catalogue_vectors(client, demo_export, demo_state, tower_inputs):
    """The raw file a catalogue photo was ingested from, uploaded as a query, reaches the model with the
    catalogue photo's exact pixels, so its vectors are the ones `marketsearch embed` stored."""
    searcher, catalog = demo_state.searcher, demo_state.catalog
    listing = next(
        x for batch in catalog.iter_listings() for x in batch
        if len(x.image_ids) == 1 and Image.open(demo_export.image_dir / f"{x.image_ids[0]}.jpg").size == (320, 240)
    )
    source = demo_export.image_dir / f"{listing.image_ids[0]}.jpg"
    with Image.open(catalog.image_path(listing.image_ids[0])) as stored:
        stored.load()
        catalogue_pixels = np.asarray(stored.convert("RGB"))
    response = upload(client, source.read_bytes(), "image/jpeg")
    assert response.status_code == 200, response.text
    [(images, shape)] = tower_inputs
    assert shape == (1, 3, *crop(searcher))
    assert np.array_equal(np.asarray(images[0]), catalogue_pixels)

    query = searcher.query_context(image=Image.open(source))
    row = searcher.embeddings.row_of[listing.id]
    assert cosine(query.embedding, searcher.embeddings.image[row]) > 0.99999
    stored_photo = searcher.photo_index.vectors([listing.id])[0]  # the service reads it from its photo index
    assert cosine(query.photo_vector, stored_photo) > 0.9999  # stored as float16


def test_a_photo_at_the_aspect_limit_is_bounded_before_the_model(client, searcher, tower_inputs):
    """8:1 is allowed: the photo becomes a 256 px square before the tower's transform, never an
    upscaled strip (the old transform resized the short side to 224 first: 1792x224 here, 4.5 million
    by 224 for a 20000x1 photo)."""
    response = upload(client, png_bytes((4000, 500)))
    assert response.status_code == 200, response.text
    [(images, shape)] = tower_inputs
    assert [image.size for image in images] == [(256, 256)]
    assert shape == (1, 3, *crop(searcher))


@pytest.mark.parametrize("size", [(20_000, 1), (30_000, 9), (1, 20_000), (900, 100)])
def test_absurd_aspect_ratios_are_422_and_never_reach_the_model(client, tower_inputs, size):
    response = upload(client, png_bytes(size))
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert f"{size[0]}x{size[1]} has an aspect ratio" in message and "the limit is 8:1" in message
    assert tower_inputs == []


def test_the_pipeline_refuses_an_absurd_shape_from_any_caller(searcher):
    with pytest.raises(ImageRejected) as info:
        searcher.search(image=Image.new("RGB", (2000, 10)), k=5)
    assert info.value.reason == "image_aspect_ratio"


def test_queries_follow_the_recorded_cleaning_settings(indexed_workspace, tmp_path, monkeypatch):
    from catalog.images import ImageCleaningConfig, save_config
    from core.workspace import Workspace
    from search.pipeline import Searcher

    source = tmp_path / "wide.png"
    source.write_bytes(png_bytes((300, 100)))
    config = ImageCleaningConfig(size=128, pad_color=(255, 255, 255))
    clean_image(source, tmp_path / "stored.jpg", config)  # a catalogue ingested with other settings
    save_config(config, tmp_path / "photo-config.json")
    monkeypatch.setattr(Workspace, "photo_config_path", property(lambda self: tmp_path / "photo-config.json"))
    searcher = Searcher.from_workspace(indexed_workspace, load_ranker=False)
    assert searcher.photo_config == config
    seen = []
    prepare = searcher.model.image_tower.prepare
    monkeypatch.setattr(searcher.model.image_tower, "prepare",
                        lambda items, train=False: seen.extend(items) or prepare(items, train))
    searcher.query_context(image=Image.open(source))
    assert np.array_equal(np.asarray(seen[0]), np.asarray(Image.open(tmp_path / "stored.jpg").convert("RGB")))
