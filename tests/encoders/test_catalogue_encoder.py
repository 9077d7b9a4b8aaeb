"""Catalogue listings encoded by the whole-tower fp32 graphs without torch (encoders.catalogue_encoder): the
vectors of the torch bundle, the training feature cache still read, photos decoded in worker processes."""

from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete

from catalog.store import Catalog
from core.workspace import Workspace
from encoders.bundle import MultiModalModel
from encoders.catalogue_encoder import load_catalogue_encoder
from encoders.embed import (
    embed_catalog,
    encode_listings,
    listing_embeddings,
    listing_photo_vectors,
    load_embeddings,
    photo_outputs,
    photo_transform,
)
from encoders.graphs import GraphError, GraphSet, graph_name
from encoders.photo_stream import load_photo
from encoders.pixels import EvalPixels
from encoders.served import EncodedPhoto, PhotoGraphEncoder, ServedHead, ServedModel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph_encoder(served_workspace):
    return load_catalogue_encoder(served_workspace.model_dir)


@pytest.fixture
def served_copy(served_workspace, tmp_path) -> Workspace:
    return Workspace.at(shutil.copytree(served_workspace.root, tmp_path / "ws"))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    present = (np.abs(a).max(1) > 0) | (np.abs(b).max(1) > 0)
    a, b = a[present].astype(np.float64), b[present].astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_catalogue_encoder_is_the_served_model_in_fp32_with_graphs_and_torch_without(
    served_workspace, trained_workspace, caplog
):
    encoder = load_catalogue_encoder(served_workspace.model_dir)
    assert isinstance(encoder, ServedModel)
    assert (encoder.text_tower.backbone.precision, encoder.image_tower.backbone.precision) == ("fp32", "fp32")
    assert encoder.fingerprint == MultiModalModel.load(served_workspace.model_dir).fingerprint
    assert isinstance(load_catalogue_encoder(served_workspace.model_dir, runtime="torch"), MultiModalModel)
    # a bundle without graphs: torch, with the reason logged; asked for the graphs, an error
    with caplog.at_level(logging.WARNING, logger="encoders.catalogue_encoder"):
        assert isinstance(load_catalogue_encoder(trained_workspace.model_dir), MultiModalModel)
    assert "encoded in torch" in caplog.text and "export-onnx" in caplog.text
    with pytest.raises(GraphError, match="export-onnx"):
        load_catalogue_encoder(trained_workspace.model_dir, runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime"):
        load_catalogue_encoder(served_workspace.model_dir, runtime="int8")


def test_graph_and_torch_paths_give_the_same_catalogue_vectors(served_workspace, graph_encoder):
    torch_model = MultiModalModel.load(served_workspace.model_dir)
    with Catalog(served_workspace.db_url, root=served_workspace.root) as catalog:
        listings = catalog.get_listings(catalog.listing_ids()[:40])
        graph = encode_listings(graph_encoder, catalog, listings)
        torch_path = encode_listings(torch_model, catalog, listings)
    assert graph.n_images.sum() > 10 and (graph.n_images == 0).any()  # photos and text-only listings
    np.testing.assert_array_equal(graph.n_images, torch_path.n_images)
    for column in ("text", "image", "listing", "photo"):
        cosines = _cosines(getattr(graph, column), getattr(torch_path, column))
        assert len(cosines) and cosines.min() >= 0.9999, (column, cosines.min())
        assert np.abs(getattr(graph, column) - getattr(torch_path, column)).max() <= 1e-5, column


def test_the_numpy_head_gives_the_torch_heads_embeddings(served_workspace, trained_model):
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(20, trained_model.image_tower.pooled_dim)).astype(np.float32) * 3
    head = ServedHead.load(served_workspace.model_dir / "image_tower")
    np.testing.assert_allclose(head(pooled), trained_model.image_tower.embed_pooled(pooled), atol=1e-6)
    with pytest.raises(ValueError, match="pooled features"):
        head(pooled[:, :10])


def embed_again(catalog, encoder, **embed_options):
    """Every listing encoded anew by ``encoder`` (stored vectors deleted first): the stats and the stored vectors."""
    with catalog.engine.begin() as conn:
        conn.execute(delete(listing_embeddings))
        conn.execute(delete(listing_photo_vectors))
    stats = embed_catalog(encoder, catalog, progress=False, **embed_options)
    return stats, load_embeddings(catalog, encoder.fingerprint)


def test_cached_and_fresh_photo_embeddings_agree_on_the_graph_path(served_copy, graph_encoder):
    assert graph_encoder.image_tower.feature_cache_key == MultiModalModel.load(
        served_copy.model_dir).image_tower.feature_cache_key  # recorded by export-onnx
    with Catalog(served_copy.db_url, root=served_copy.root) as catalog:
        cached_stats, cached = embed_again(catalog, graph_encoder, feature_cache=served_copy.feature_cache_dir,
                                           workers=0)
        fresh_stats, fresh = embed_again(catalog, graph_encoder, feature_cache=None, workers=0)
    assert cached_stats.images_encoded > 0 and cached_stats.images_from_cache == cached_stats.images_encoded
    assert fresh_stats.images_from_cache == 0 and fresh_stats.images_encoded == cached_stats.images_encoded
    np.testing.assert_array_equal(cached.has_image, fresh.has_image)
    for column in ("image", "listing"):
        assert np.abs(getattr(cached, column) - getattr(fresh, column)).max() <= 1e-5, column


@pytest.mark.parametrize("workers", [1, 2])
def test_photo_workers_on_the_graph_path_give_the_inline_vectors_and_report_unreadable_photos(
    served_copy, graph_encoder, workers
):
    with Catalog(served_copy.db_url, root=served_copy.root) as catalog:
        listings = [x for x in catalog.get_listings(catalog.listing_ids()) if len(x.image_ids) >= 2][:2]
        broken = catalog.image_path(listings[0].image_ids[0])
        broken.write_bytes(b"not a photo")

        inline_stats, inline = embed_again(catalog, graph_encoder, workers=0, batch_size=8)
        stats, pooled = embed_again(catalog, graph_encoder, workers=workers, batch_size=8)
    assert stats.image_errors == inline_stats.image_errors == 1
    assert stats.errors == inline_stats.errors and listings[0].image_ids[0] in stats.errors[0]
    assert stats.images_encoded == inline_stats.images_encoded > 0
    np.testing.assert_array_equal(pooled.text, inline.text)
    # the workers run the image graph one photo at a time on one thread, inline runs it in batches
    for column in ("image", "listing", "photo"):
        np.testing.assert_allclose(getattr(pooled, column), getattr(inline, column), atol=2e-6, err_msg=column)


def test_with_workers_the_served_image_graph_runs_in_them(served_copy, graph_encoder, tmp_path):
    tower = graph_encoder.image_tower
    for workers in (0, 1):  # inline, or one worker: pixels for batched forwards here
        assert isinstance(photo_transform(tower, workers=workers), EvalPixels)
    encoder = photo_transform(tower, workers=2)
    assert isinstance(encoder, PhotoGraphEncoder)
    with Catalog(served_copy.db_url, root=served_copy.root) as catalog:
        paths = [catalog.image_path(i) for listing in catalog.get_listings(catalog.listing_ids()[:6])
                 for i in listing.image_ids][:5]
    photos = [load_photo(path) for path in paths]
    want_embeddings, want_pooled = tower.encode_with_pooled(photos)
    in_worker = pickle.loads(pickle.dumps(encoder))  # what a worker gets: the graph's file, no session
    got = [in_worker(photo) for photo in photos]
    assert all(isinstance(one, EncodedPhoto) for one in got)
    np.testing.assert_allclose(np.stack([one.embedding for one in got]), want_embeddings, atol=2e-6)
    np.testing.assert_allclose(np.stack([one.pooled for one in got]), want_pooled, atol=2e-5)
    np.testing.assert_allclose(photo_outputs(tower, got, 2)[0], want_embeddings, atol=2e-6)
    # a graph file replaced after the model was loaded (a retraining meanwhile) is refused, not used
    folder = shutil.copytree(encoder.graphs.folder, tmp_path / "onnx")
    graphs = GraphSet(folder, encoder.graphs.manifest)
    replaced = folder / graph_name("image", "fp32")
    replaced.write_bytes(replaced.read_bytes() + b"\0")
    with pytest.raises(GraphError, match="does not match its manifest"):
        PhotoGraphEncoder(graphs, "fp32", tower.preprocessing)(photos[0])


def test_marketsearch_embed_on_the_graph_path_imports_no_torch(served_copy):
    script = f"""
import sys
from sqlalchemy import delete
from catalog.store import Catalog
from core.workspace import Workspace
from encoders.catalogue_encoder import load_catalogue_encoder
from encoders.embed import embed_catalog, listing_embeddings

workspace = Workspace.at({str(served_copy.root)!r})
encoder = load_catalogue_encoder(workspace.model_dir, runtime="onnxruntime")
with Catalog(workspace.db_url, root=workspace.root) as catalog:
    with catalog.engine.begin() as conn:
        conn.execute(delete(listing_embeddings))
    stats = embed_catalog(encoder, catalog, progress=False, workers=2, feature_cache=None)
assert stats.encoded > 0 and stats.images_encoded > 0, stats
print("torch:" + ",".join(m for m in ("torch", "torchvision", "transformers") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "torch:", done.stdout
