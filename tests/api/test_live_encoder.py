"""The catalogue encoder of the service's live follower: the one `marketsearch embed` loads (its default
``--runtime auto``: both backbones in the bundle's fp32 graphs), so a listing written through the API gets the
vectors the command gives it, for half the CPU of torch per listing (docs/benchmarks.md, "Writes")."""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from typer.testing import CliRunner

from api.config import Settings
from api.main import create_app
from catalog.api_keys import create_key
from catalog.store import Catalog
from core.workspace import Workspace
from encoders.bundle import MultiModalModel
from encoders.embed import load_embeddings, model_photo_dim
from encoders.runtime import export_graphs, graph_dir
from marketsearch.cli import app


def _photo() -> bytes:
    """A photo no demo listing has (seeded shapes)."""
    rng = np.random.default_rng(11)
    pixels = np.zeros((300, 400, 3), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 250), rng.integers(0, 350)
        pixels[y : y + 50, x : x + 50] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_listing_created_through_the_api_is_encoded_by_the_fp32_graphs_as_marketsearch_embed_does(
    indexed_workspace, tmp_path
):
    workspace = Workspace.at(shutil.copytree(indexed_workspace.root, tmp_path / "ws"))
    fingerprint = MultiModalModel.load(workspace.model_dir).fingerprint
    export_graphs(MultiModalModel.load(workspace.model_dir), graph_dir(workspace.model_dir), [], int8=False)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _, key = create_key(catalog, "listings:write", name="test")
    with TestClient(create_app(Settings(workspace=workspace.root))) as client:
        response = client.post(
            "/listings",
            headers={"Authorization": f"Bearer {key}"},
            data={"title": "zorblaxian garden chair", "price": "25", "category": "Home & Garden / Garden / Furniture",
                  "description": "A sturdy wooden chair for the garden, hardly used.", "location": "Leeds"},
            files=[("photos", ("chair.png", _photo(), "image/png"))],
        )
        assert response.status_code == 201, response.text
        listing_id = response.json()["id"]
        service = client.app.state.service
        deadline = time.monotonic() + 120
        while listing_id not in service.searcher.snapshot.delta.embeddings.row_of and time.monotonic() < deadline:
            time.sleep(0.05)
        delta = service.searcher.snapshot.delta.embeddings
        assert listing_id in delta.row_of
        encoder = service.follower.encoder
        assert encoder is not service.searcher.model  # queries may be served by int8 graphs, listings never are
        assert (encoder.text_tower.backbone.runtime, encoder.image_tower.backbone.runtime) == ("onnxruntime",) * 2
        assert (encoder.text_tower.backbone.precision, encoder.image_tower.backbone.precision) == ("fp32",) * 2
    result = CliRunner().invoke(app, ["embed", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "backbones in onnxruntime" in result.output
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        batch = load_embeddings(catalog, fingerprint)
    live, stored = delta.row_of[listing_id], batch.row_of[listing_id]
    for column in ("text", "image", "listing"):
        assert np.abs(getattr(delta, column)[live] - getattr(batch, column)[stored]).max() <= 1e-6, column
    # the photo vectors too: the colour half computed in `embed`'s decoding workers and in the live follower
    assert delta.photo.shape[1] == batch.photo.shape[1] == model_photo_dim(encoder)
    assert np.abs(delta.photo[live].astype(np.float32) - batch.photo[stored].astype(np.float32)).max() <= 1e-3
