"""ONNX Runtime graphs of the towers: fp32 equals torch, int8 ranks like fp32 within a stated bound, the graph
manifest binds the graphs to the bundle's weights and checksums, and a broken graph is refused with a reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from catalog.store import Catalog
from encoders.photo_stream import load_photo
from encoders.runtime import (
    GraphError,
    GraphSet,
    export_graphs,
    graph_dir,
    record_gates,
    sha256_file,
    use_graphs,
)

# Bounds measured on this fixture (see docs/benchmarks.md "Runtimes" for the dev export's gate figures):
# int8 rankings of the listings by query vector keep at least this share of the fp32 top 10 on average.
TEXT_INT8_TOP10_OVERLAP = 0.8
IMAGE_INT8_TOP10_OVERLAP = 0.6
FP32_MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def photos(trained_workspace):
    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        paths = [catalog.image_path(i) for listing in catalog.get_listings(catalog.listing_ids()[:60])
                 for i in listing.image_ids]
    finally:
        catalog.close()
    return [p for p in paths if p is not None and p.is_file()]


@pytest.fixture(scope="module")
def exported(trained_model, photos, tmp_path_factory):
    folder = graph_dir(tmp_path_factory.mktemp("graphs") / "model")
    export_graphs(trained_model, folder, photos[:16])
    return folder


@pytest.fixture()
def model(trained_model):
    yield trained_model
    for tower in (trained_model.text_tower, trained_model.image_tower):
        tower.backbone.detach_session()


def _queries(trained_workspace) -> list[str]:
    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        return [listing.title for listing in catalog.get_listings(catalog.listing_ids()[::7])]
    finally:
        catalog.close()


def _top10_overlap(a: np.ndarray, b: np.ndarray, corpus: np.ndarray) -> float:
    top_a = np.argsort(-(a @ corpus.T), axis=1)[:, :10]
    top_b = np.argsort(-(b @ corpus.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b)]))


def test_fp32_graphs_encode_like_torch(model, exported, photos, trained_workspace):
    texts = _queries(trained_workspace)[:20]
    images = [load_photo(p) for p in photos[:12]]
    want_text, want_image = model.encode_texts(texts), model.encode_images(images)
    graphs = GraphSet.open(exported, model.fingerprint)
    use_graphs(model, graphs, "text", "fp32")
    use_graphs(model, graphs, "image", "fp32")
    assert model.text_tower.backbone.runtime == model.image_tower.backbone.runtime == "onnxruntime"
    np.testing.assert_allclose(model.encode_texts(texts), want_text, atol=FP32_MAX_ABS_DIFF)
    np.testing.assert_allclose(model.encode_images(images), want_image, atol=FP32_MAX_ABS_DIFF)


def test_int8_rankings_agree_with_fp32(model, exported, photos, trained_workspace):
    from encoders.embed import load_embeddings

    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        corpus = load_embeddings(catalog, model.fingerprint).listing
    finally:
        catalog.close()
    texts = _queries(trained_workspace)
    images = [load_photo(p) for p in photos[16:56]]  # not the calibration photos
    graphs = GraphSet.open(exported, model.fingerprint)
    vectors = {}
    for precision in ("fp32", "int8"):
        use_graphs(model, graphs, "text", precision)
        use_graphs(model, graphs, "image", precision)
        assert model.text_tower.backbone.precision == precision
        vectors[precision] = (model.encode_texts(texts), model.encode_images(images))
    (text32, image32), (text8, image8) = vectors["fp32"], vectors["int8"]
    assert not np.array_equal(text8, text32), "the int8 graph should not be the fp32 graph"
    assert _top10_overlap(text32, text8, corpus) >= TEXT_INT8_TOP10_OVERLAP
    assert _top10_overlap(image32, image8, corpus) >= IMAGE_INT8_TOP10_OVERLAP


def test_manifest_binds_graphs_to_the_bundle_fingerprint_and_checksums(model, exported, tmp_path):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == model.fingerprint
    assert set(manifest["graphs"]) == {"text.fp32.onnx", "text.int8.onnx", "image.fp32.onnx", "image.int8.onnx"}
    for name, entry in manifest["graphs"].items():
        assert entry["sha256"] == sha256_file(exported / name)
    with pytest.raises(GraphError, match="exported from model"):
        GraphSet.open(exported, "0" * 64)  # graphs of other weights
    with pytest.raises(GraphError, match="export-onnx"):
        GraphSet.open(tmp_path / "nothing", model.fingerprint)


def test_a_corrupted_graph_is_refused_with_the_reason(model, exported, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "image.fp32.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "image.fp32.onnx").write_bytes(bytes(data))
    graphs = GraphSet.open(copy, model.fingerprint)
    with pytest.raises(GraphError, match="does not match its manifest"):
        use_graphs(model, graphs, "image", "fp32")
    assert model.image_tower.backbone.runtime == "torch"
    use_graphs(model, graphs, "text", "fp32")  # the other graphs are still usable
    (copy / "text.fp32.onnx").unlink()
    with pytest.raises(GraphError, match="missing"):
        graphs.verified_path("text", "fp32")


def test_int8_is_chosen_only_where_its_gate_passed(model, exported, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(exported, copy)
    graphs = GraphSet.open(copy, model.fingerprint)
    assert graphs.choose_precision("text")[0] == "fp32" and "no quality gate" in graphs.choose_precision("text")[1]
    record_gates(copy, {"text": {"passed": True, "reason": "ok"},
                        "image": {"passed": False, "reason": "NDCG@10 2.0 points below fp32"}})
    graphs = GraphSet.open(copy, model.fingerprint)
    assert graphs.choose_precision("text") == ("int8", None)
    precision, why = graphs.choose_precision("image")
    assert precision == "fp32" and "failed its quality gate: NDCG@10 2.0 points below fp32" in why
    assert graphs.choose_precision("text", allow_int8=False)[0] == "fp32"  # the settings turned it off
