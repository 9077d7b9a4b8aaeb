"""Start-up loading: a broken re-ranker costs re-ranking, not search."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from marketsearch.workspace import Workspace


def test_broken_ranker_serves_without_reranking(indexed_workspace, tmp_path):
    workspace = Workspace.at(tmp_path / "ws")
    shutil.copytree(indexed_workspace.root, workspace.root)
    workspace.ranker_dir.mkdir(exist_ok=True)
    (workspace.ranker_dir / "meta.json").write_text('{"format_version": 999}')
    (workspace.ranker_dir / "model.txt").write_text("not a model")

    with TestClient(create_app(Settings(workspace=workspace.root)), raise_server_exceptions=False) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        ranker = health.json()["ranker"]
        assert ranker["loaded"] is False and "serving without it" in ranker["error"]
        response = client.post("/search/text", json={"query": "good condition", "rerank": True})
        assert response.status_code == 200
        assert response.json()["reranked"] is False and response.json()["count"] > 0
