"""The service serves the served model (encoders.served) when the bundle's graphs verify, starting without torch,
transformers or scikit-learn; otherwise the torch model, with the reason in /health."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from encoders.graphs import graph_dir


def test_service_serves_the_torch_model_with_the_reason_when_the_graphs_do_not_verify(served_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(served_workspace.root, root)
    graph = graph_dir(root / "model") / "text.fp32.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])
    with TestClient(create_app(Settings(workspace=root, live_follow=False)), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert "the torch model is served" in model["runtime_notes"]["served_model"]
        assert "does not match its manifest" in model["runtime_notes"]["served_model"]
        assert model["text_runtime"] == "torch" and "does not match its manifest" in model["text_runtime_error"]
        assert model["image_runtime"] == "onnxruntime"  # its graph still verifies: backbone in ONNX Runtime
        response = client.post("/search/text", json={"query": "good condition"})
        assert response.status_code == 200 and response.json()["count"] > 0


def test_service_start_imports_no_torch_transformers_scikit_learn_or_numba(served_workspace):
    script = f"""
import sys
import api.main
from api.config import Settings
from api.state import load_state

state = load_state(Settings(workspace={str(served_workspace.root)!r}, live_follow=False))
assert state.searcher is not None, state.searcher_error
assert type(state.searcher.model).__name__ == "ServedModel", state.runtime_notes
state.searcher.search(text="good condition", k=5)
heavy = ("torch", "torchvision", "transformers", "sklearn", "lightgbm", "pandas", "numba")
loaded = sorted(m for m in heavy if m in sys.modules)
print("loaded:" + ",".join(loaded))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(done.stdout.strip().splitlines()[-1].removeprefix("loaded:").split(",")) - {""}
    assert not loaded, loaded  # (a re-ranker loads without lightgbm too: tests/ranking/test_booster.py)



def test_a_listing_written_live_is_encoded_without_importing_torch(served_workspace, tmp_path):
    """The live follower's catalogue encoder is the served model in fp32 (encoders.catalogue_encoder): loading the
    state, preloading the encoder and encoding a new listing with a photo import no torch."""
    root = tmp_path / "ws"
    shutil.copytree(served_workspace.root, root)
    script = f"""
import io, sys, time
from fastapi.testclient import TestClient
from PIL import Image
from api.config import Settings
from api.main import create_app
from catalog.api_keys import create_key
from catalog.store import Catalog
from core.workspace import Workspace

workspace = Workspace.at({str(root)!r})
with Catalog(workspace.db_url, root=workspace.root) as catalog:
    _, key = create_key(catalog, "listings:write", name="test")
photo = io.BytesIO()
Image.new("RGB", (320, 240), (200, 40, 90)).save(photo, "PNG")
with TestClient(create_app(Settings(workspace=workspace.root, live_preload_encoder=True))) as client:
    response = client.post("/listings", headers={{"Authorization": "Bearer " + key}},
                           data={{"title": "zorblaxian garden chair", "price": "25", "location": "Leeds",
                                 "category": "Home & Garden / Garden / Furniture"}},
                           files=[("photos", ("chair.png", photo.getvalue(), "image/png"))])
    assert response.status_code == 201, response.text
    listing_id = response.json()["id"]
    service = client.app.state.service
    deadline = time.monotonic() + 120
    while listing_id not in service.searcher.snapshot.delta.embeddings.row_of and time.monotonic() < deadline:
        time.sleep(0.05)
    delta = service.searcher.snapshot.delta.embeddings
    assert delta.has_image[delta.row_of[listing_id]], "the photo was not encoded"
    assert type(service.follower.encoder).__name__ == "ServedModel"
    assert client.get("/health").json()["live"]["encoder_loaded"]
heavy = ("torch", "torchvision", "transformers", "sklearn")
print("loaded:" + ",".join(m for m in heavy if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(done.stdout.strip().splitlines()[-1].removeprefix("loaded:").split(",")) - {""}
    assert not loaded, loaded
