"""What must hold of a workspace after a killed command: the checks the crash tests run after every kill."""

from __future__ import annotations

import dataclasses
import io
import os
import sqlite3
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from api.main import create_app
from catalog.store import Catalog
from core.workspace import Workspace

QUERIES = ("chair", "red bike", "phone case", "garden table")


def temporaries(root: Path) -> list[str]:
    """Everything under ``root`` that looks like work in progress (hidden names with tmp, staging or old)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if name.startswith(".") and any(mark in name for mark in ("tmp", "staging", "old")):
                found.append(str((Path(folder) / name).relative_to(root)))
    return sorted(found)


def catalogue_ids(workspace: Workspace) -> set[str]:
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        return set(catalog.listing_ids())


def serve(workspace: Workspace, *, photo_of: str | None = None) -> dict:
    """Start the service on ``workspace`` in-process (its real start-up: artefact loading, stale-temporary
    clean-up), and return /health and the listing ids of a few text searches and, with ``photo_of``, of a
    search with that listing's first photo."""
    settings = Settings(workspace=workspace.root, text_runtime="torch")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/health")
        searches = {}
        if health.status_code == 200:
            for query in QUERIES:
                response = client.post("/search/text", json={"query": query, "k": 10})
                assert response.status_code == 200, response.text
                searches[query] = [hit["listing"]["id"] for hit in response.json()["hits"]]
            if photo_of is not None:
                photo = client.get(f"/listings/{photo_of}").json()["photos"][0]["url"]
                data = client.get(photo).content
                response = client.post("/search/image", files={"file": ("photo.jpg", data, "image/jpeg")},
                                       data={"k": "10"})
                assert response.status_code == 200, response.text
                searches["photo"] = [hit["listing"]["id"] for hit in response.json()["hits"]]
        return {"status": health.status_code, "health": health.json(), "searches": searches}


def assert_serves_a_consistent_set(workspace: Workspace, *, reranked: bool | None = None) -> dict:
    """The service starts, searches return listings of the catalogue, and it serves one published index set
    whose vector index and BM25 index belong together."""
    from index.index_set import load_index_set

    served = serve(workspace)
    assert served["status"] == 200, served["health"]
    health = served["health"]
    known = catalogue_ids(workspace)
    for query, ids in served["searches"].items():
        assert set(ids) <= known, f"{query!r} returned listings the catalogue does not hold: {set(ids) - known}"
    assert any(served["searches"].values()), served["searches"]
    index_set = load_index_set(workspace.index_dir)  # verifies every checksum of the set CURRENT names
    assert health["index"]["index_set"] == index_set.version
    assert health["index"]["count"] == len(index_set.vector) and health["bm25_documents"] == len(index_set.bm25)
    assert set(index_set.vector.listing_ids) <= set(index_set.bm25.listing_ids) <= known
    if reranked is not None:
        assert health["ranker"]["loaded"] is reranked, health["ranker"]
    return served


def catalogue_rows(workspace: Workspace) -> dict[str, list]:
    """Every row of the catalogue's listing and image tables (timestamps of writing left out), sorted."""
    with sqlite3.connect(workspace.db_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(listings)") if row[1] != "updated_at"]
        listings = sorted(db.execute(f"SELECT {', '.join(columns)} FROM listings").fetchall())
        images = sorted(db.execute("SELECT * FROM images").fetchall())
    return {"listings": listings, "images": images}


def embedding_rows(workspace: Workspace) -> dict[str, list]:
    with sqlite3.connect(workspace.db_path) as db:
        embeddings = sorted(db.execute(
            "SELECT listing_id, model_fingerprint, content_hash, dim, has_image, n_images FROM listing_embeddings"
        ).fetchall())
        photos = sorted(db.execute(
            "SELECT listing_id, model_fingerprint, content_hash, dim, n_photos FROM listing_photo_vectors"
        ).fetchall())
    return {"embeddings": embeddings, "photo_vectors": photos}


def assert_photos_complete(workspace: Workspace) -> None:
    """Every photo the catalogue names is a whole, decodable file."""
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        for listing_id in catalog.listing_ids():
            for image in catalog.images_of(listing_id):
                path = catalog.image_path(image.id)
                with Image.open(io.BytesIO(path.read_bytes())) as photo:
                    photo.load()


def add_listing_like(workspace: Workspace, source_id: str) -> str:
    """Add a copy of ``source_id`` (no photos) to the catalogue, with a copy of its stored embeddings: a
    listing that the next `marketsearch index` puts in both indexes."""
    new_id = f"{source_id}-copy"
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        listing = catalog.get_listing(source_id)
        catalog.upsert_listings([dataclasses.replace(listing, id=new_id, image_ids=())])
    with sqlite3.connect(workspace.db_path) as db:
        for table in ("listing_embeddings", "listing_photo_vectors"):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            rest = ", ".join(c for c in columns if c != "listing_id")
            db.execute(f"INSERT INTO {table} (listing_id, {rest}) SELECT ?, {rest} FROM {table} WHERE listing_id = ?",
                       (new_id, source_id))
    return new_id


def assert_embeddings_whole(workspace: Workspace) -> None:
    """Every stored embedding row has its photo-vector row (one transaction writes both), none twice."""
    with sqlite3.connect(workspace.db_path) as db:
        embedded = db.execute("SELECT listing_id, model_fingerprint FROM listing_embeddings").fetchall()
        photos = db.execute("SELECT listing_id, model_fingerprint FROM listing_photo_vectors").fetchall()
        short = db.execute("SELECT COUNT(*) FROM listing_embeddings WHERE length(listing) != 4 * dim").fetchone()[0]
    assert len(set(embedded)) == len(embedded) and sorted(embedded) == sorted(photos)
    assert short == 0


def forget_embeddings(workspace: Workspace, listing_ids) -> None:
    """Drop the stored embeddings of ``listing_ids``, as for listings ingested since the last `embed`."""
    with sqlite3.connect(workspace.db_path) as db:
        for table in ("listing_embeddings", "listing_photo_vectors"):
            db.executemany(f"DELETE FROM {table} WHERE listing_id = ?", [(i,) for i in listing_ids])


def stored_vectors(workspace: Workspace) -> dict[str, bytes]:
    with sqlite3.connect(workspace.db_path) as db:
        return dict(db.execute("SELECT listing_id, listing FROM listing_embeddings").fetchall())
