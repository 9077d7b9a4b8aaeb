"""Start-up loading: a broken re-ranker costs re-ranking, not search; queries are encoded in ONNX Runtime
(or in torch, with the reason in /health, when it cannot be used)."""

from __future__ import annotations

import shutil
import sys

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from core.workspace import Workspace


def test_broken_ranker_serves_without_reranking(indexed_workspace, tmp_path):
    workspace = Workspace.at(tmp_path / "ws")
    shutil.copytree(indexed_workspace.root, workspace.root)
    workspace.ranker_dir.mkdir(exist_ok=True)
    (workspace.ranker_dir / "meta.json").write_text('{"format_version": 999}')
    (workspace.ranker_dir / "model.txt").write_text("not a model")

    settings = Settings(workspace=workspace.root, text_runtime="torch")  # not about the runtime: skip the export
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        ranker = health.json()["ranker"]
        assert ranker["loaded"] is False and "serving without it" in ranker["error"]
        response = client.post("/search/text", json={"query": "good condition", "rerank": True})
        assert response.status_code == 200
        assert response.json()["reranked"] is False and response.json()["count"] > 0


def _copy(workspace: Workspace, tmp_path) -> Workspace:
    copy = Workspace.at(tmp_path / "ws")
    shutil.copytree(workspace.root, copy.root)
    return copy


def test_queries_are_encoded_in_onnxruntime_with_the_torch_results(indexed_workspace, searcher, tmp_path):
    workspace = _copy(indexed_workspace, tmp_path)
    queries = ["good condition", "red bike", "oak dining table with four chairs", "iphone"]
    with TestClient(create_app(Settings(workspace=workspace.root)), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert model["text_runtime"] == "onnxruntime" and model["text_runtime_error"] is None
        served = [client.post("/search/text", json={"query": q, "k": 10}).json() for q in queries]
    for query, answer in zip(queries, served):
        expected = searcher.search(text=query, k=10)  # the session fixture encodes in torch
        assert [hit["listing"]["id"] for hit in answer["hits"]] == [hit.listing_id for hit in expected.hits]
        assert [hit["scores"]["vector"] for hit in answer["hits"] if "vector" in hit["scores"]] == pytest.approx(
            [hit.scores["vector"] for hit in expected.hits if "vector" in hit.scores], abs=1e-5
        )


def test_without_onnxruntime_queries_are_encoded_in_torch_and_health_says_why(indexed_workspace, tmp_path, monkeypatch):
    workspace = _copy(indexed_workspace, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with TestClient(create_app(Settings(workspace=workspace.root)), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert model["text_runtime"] == "torch" and "onnxruntime is not installed" in model["text_runtime_error"]
        response = client.post("/search/text", json={"query": "good condition"})
        assert response.status_code == 200 and response.json()["count"] > 0


def test_text_runtime_torch_is_not_an_error(indexed_workspace, tmp_path):
    workspace = _copy(indexed_workspace, tmp_path)
    settings = Settings(workspace=workspace.root, text_runtime="torch")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert model["text_runtime"] == "torch" and model["text_runtime_error"] is None


def test_public_text_keeps_workspace_relative_names_and_drops_other_absolute_paths(tmp_path):
    from api.state import public_text

    root = tmp_path / "ws"
    message = (
        f"no catalogue database at {root}/catalog.db; run `marketsearch build --workspace {root}`; "
        f"cache at {tmp_path}/hf/model.safetensors; use GET /categories; see https://example.org/a/b"
    )
    assert public_text(message, root) == (
        "no catalogue database at catalog.db; run `marketsearch build --workspace ws`; "
        "cache at model.safetensors; use GET /categories; see https://example.org/a/b"
    )


def test_exported_graphs_are_served_and_a_corrupted_one_falls_back_to_torch_with_the_reason(indexed_workspace,
                                                                                            tmp_path):
    from encoders.bundle import MultiModalModel
    from encoders.runtime import export_graphs, graph_dir

    workspace = _copy(indexed_workspace, tmp_path)
    export_graphs(MultiModalModel.load(workspace.model_dir), graph_dir(workspace.model_dir), [], int8=False)
    lazy = Settings(workspace=workspace.root, live_preload_encoder=False)
    with TestClient(create_app(lazy), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert model["text_runtime"] == model["image_runtime"] == "onnxruntime"
        assert model["text_precision"] == model["image_precision"] == "fp32"
        assert "no int8 graph" in model["runtime_notes"]["text"]
        # the catalogue encoder (torch, fp32) waits for the first listing written live: not loaded at start
        assert not client.app.state.service.follower.encoder_loaded
    image_graph = graph_dir(workspace.model_dir) / "image.fp32.onnx"
    image_graph.write_bytes(image_graph.read_bytes()[:-100])  # truncated, as by a full disk
    with TestClient(create_app(Settings(workspace=workspace.root)), raise_server_exceptions=False) as client:
        model = client.get("/health").json()["model"]
        assert model["text_runtime"] == "onnxruntime" and model["text_runtime_error"] is None
        assert model["image_runtime"] == "torch"
        assert "does not match its manifest" in model["image_runtime_error"]
        assert str(tmp_path) not in model["image_runtime_error"]  # no server path in a public answer
