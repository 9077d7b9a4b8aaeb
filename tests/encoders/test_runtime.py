"""ONNX Runtime graphs of the towers: fp32 equals torch, int8 ranks like fp32 within a stated bound, the graph
manifest binds the graphs to the bundle's weights and checksums, and a broken graph is refused with a reason."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

from catalog.store import Catalog
from encoders.photo_stream import load_photo
from encoders.runtime import (
    TEXT_QUANTISATION,
    GraphError,
    GraphSet,
    ImageQuantisation,
    conv_nodes,
    export_graphs,
    export_image_onnx,
    graph_dir,
    head_nodes,
    image_quantisation_for,
    open_session,
    quantize_image_graph,
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


def _ranking_check_inputs(model, photos, trained_workspace) -> tuple[np.ndarray, list[str], list]:
    """The catalogue's listing vectors, text queries and query photos (not the calibration photos)."""
    from encoders.embed import load_embeddings

    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        corpus = load_embeddings(catalog, model.fingerprint).listing
    finally:
        catalog.close()
    return corpus, _queries(trained_workspace), [load_photo(p) for p in photos[16:56]]


def test_int8_rankings_agree_with_fp32(model, exported, photos, trained_workspace):
    corpus, texts, images = _ranking_check_inputs(model, photos, trained_workspace)
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


def test_served_int8_towers_rank_like_fp32_and_the_gate_encodes_through_them(model, exported, photos,
                                                                              trained_workspace):
    """The whole-tower graphs as the service runs them (the image graph's head int8 too), and the gate's way of
    putting them in the model's place (``evaluation.runtime_gate.tower_replaced``)."""
    from encoders.served import served_tower
    from evaluation.runtime_gate import tower_replaced

    corpus, texts, images = _ranking_check_inputs(model, photos, trained_workspace)
    graphs = GraphSet.open(exported, model.fingerprint)
    torch_tower = model.image_tower
    vectors = {}
    for precision in ("fp32", "int8"):
        text, image = served_tower(graphs, "text", precision), served_tower(graphs, "image", precision)
        with tower_replaced(model, image):
            assert model.image_tower is image
            vectors[precision] = (text.encode(texts), model.encode_images(images))
        assert model.image_tower is torch_tower
        np.testing.assert_array_equal(vectors[precision][1], image.encode(images))
    (text32, image32), (text8, image8) = vectors["fp32"], vectors["int8"]
    np.testing.assert_allclose(image32, torch_tower.encode(images), atol=FP32_MAX_ABS_DIFF)
    assert not np.array_equal(image8, image32), "the int8 graph should not be the fp32 graph"
    assert _top10_overlap(text32, text8, corpus) >= TEXT_INT8_TOP10_OVERLAP
    assert _top10_overlap(image32, image8, corpus) >= IMAGE_INT8_TOP10_OVERLAP


def test_manifest_binds_graphs_to_the_bundle_fingerprint_and_checksums(model, exported, tmp_path):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == model.fingerprint
    assert set(manifest["graphs"]) == {"text.fp32.onnx", "text.int8.onnx", "image.fp32.onnx", "image.int8.onnx"}
    for name, entry in manifest["graphs"].items():
        assert entry["sha256"] == sha256_file(exported / name)
    # the int8 image graph's recipe is the image backbone's, recorded beside the graphs
    recipe = image_quantisation_for(model.image_tower.backbone.name)
    assert manifest["image_quantisation"] == json.loads(json.dumps(asdict(recipe)))
    assert image_quantisation_for("mobilenet_v2").keep_first_convs == 6
    assert image_quantisation_for("mobilenet_v2").quant_format == "QOperator"
    with pytest.raises(GraphError, match="exported from model"):
        GraphSet.open(exported, "0" * 64)  # graphs of other weights
    with pytest.raises(GraphError, match="export-onnx"):
        GraphSet.open(tmp_path / "nothing", model.fingerprint)


def _op_counts(path) -> dict[str, int]:
    import collections

    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_the_text_graph_is_fused_and_its_int8_quantises_the_fused_attention(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    fp32, int8 = _op_counts(exported / "text.fp32.onnx"), _op_counts(exported / "text.int8.onnx")
    layers = fp32["Attention"]
    assert layers > 0 and manifest["text_graph"]["fused"]["Attention"] == layers
    assert manifest["text_graph"]["exporter"] == "torchscript"
    # every fused attention became QAttention (its Q/K/V projection in int8); no unfused attention MatMul is left
    assert int8["QAttention"] == layers and int8["Attention"] == 0
    assert manifest["text_quantisation"] == json.loads(json.dumps(asdict(TEXT_QUANTISATION)))


def test_a_fused_graph_that_cannot_run_is_refused_with_the_reason(model, exported, tmp_path):
    import onnx

    copy = tmp_path / "onnx"
    shutil.copytree(exported, copy)
    graph = onnx.load(str(copy / "text.fp32.onnx"))
    attention = next(node for node in graph.graph.node if node.op_type == "Attention")
    heads = next(a for a in attention.attribute if a.name == "num_heads")
    heads.i = heads.i * 1000 + 1  # not a divisor of the hidden size
    onnx.save(graph, str(copy / "text.fp32.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["text.fp32.onnx"]["sha256"] = sha256_file(copy / "text.fp32.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GraphError, match="text.fp32.onnx"):
        use_graphs(model, GraphSet.open(copy, model.fingerprint), "text", "fp32")
    assert model.text_tower.backbone.runtime == "torch"


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


def _head_weights_left_fp32(fp32_path, int8_path, backbone_output: str) -> dict[str, bool]:
    """Per weight of a MatMul/Gemm after the backbone's output in the fp32 graph: is it still read as a float
    initializer by a MatMul/Gemm of the int8 graph (not quantised)?"""
    import onnx

    head = set(head_nodes(fp32_path, backbone_output))
    weights = [node.input[1] for node in onnx.load(str(fp32_path)).graph.node
               if node.name in head and node.op_type in ("MatMul", "Gemm")]
    graph = onnx.load(str(int8_path)).graph
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    read = {name for node in graph.node if node.op_type in ("MatMul", "Gemm") for name in node.input}
    return {weight: any(name.startswith(weight) and name in floats for name in read) for weight in weights}


def test_whole_tower_graphs_quantise_the_backbone_and_the_head_as_their_recipes_say(model, exported):
    import onnx

    assert not any(module.training for tower in (model.text_tower, model.image_tower)
                   for module in tower.modules()), "the export leaves the towers in eval mode"
    how = image_quantisation_for(model.image_tower.backbone.name)
    assert how.int8_head, "MobileNetV2's recipe quantises the head's Linears"
    for modality, backbone_output, fp32_head in (("text", "last_hidden_state", True), ("image", "feature_map", False)):
        left = _head_weights_left_fp32(exported / f"{modality}.fp32.onnx", exported / f"{modality}.int8.onnx",
                                       backbone_output)
        # the projection head's two Linears: fp32 in the text graph, int8 (QGemm) in the image graph
        assert len(left) == 2 and all(value == fp32_head for value in left.values()), (modality, left)
    image_ops = [node.op_type for node in onnx.load(str(exported / "image.int8.onnx")).graph.node]
    assert image_ops.count("QGemm") == 2
    text_ops = {node.op_type for node in onnx.load(str(exported / "text.int8.onnx")).graph.node}
    assert "MatMulInteger" in text_ops or "DynamicQuantizeMatMul" in text_ops  # the backbone: int8
    # MobileNetV2's recipe names its first 6 convs: they resolve in the whole-tower graph and stay fp32
    kept = how.keep_first_convs
    convs = _float_conv_weights(exported / "image.int8.onnx")
    assert convs[:kept] == [True] * kept and not any(convs[kept:])


class _SeparableNet(torch.nn.Module):
    """A stem conv, a depthwise and a pointwise conv, and a last 1x1 conv: the shape of a MobileNet block."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = torch.nn.Conv2d(8, 16, 1)
        self.last = torch.nn.Conv2d(16, 32, 1)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3

    def forward(self, pixels):
        x = torch.clamp(self.stem(pixels), 0, 6)
        x = torch.clamp(self.depthwise(x), 0, 6)
        return torch.clamp(self.last(self.pointwise(x)), 0, 6)


def _float_conv_weights(path) -> list[bool]:
    """Per Conv node of the graph, in order: does it read a float weight initializer (left in fp32)?"""
    import onnx

    graph = onnx.load(str(path)).graph
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    return [node.input[1] in floats for node in graph.node if node.op_type == "Conv"]


@pytest.mark.parametrize(("how", "left_fp32"), [
    (ImageQuantisation(), [False, False, False, False]),
    (ImageQuantisation(keep_fp32=("first_conv", "depthwise")), [True, True, False, False]),
    (ImageQuantisation(keep_fp32=("last_conv",)), [False, False, False, True]),
    (ImageQuantisation(keep_first_convs=3), [True, True, True, False]),
    (ImageQuantisation(keep_convs=(0, 2)), [True, False, True, False]),
])
def test_image_quantisation_leaves_the_chosen_convs_in_fp32(how, left_fp32, tmp_path):
    net = _SeparableNet().eval()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(24, 3, 32, 32, generator=generator) * 2 - 1
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(export_image_onnx(net, pixels[:2]))
    int8 = tmp_path / "int8.onnx"
    quantize_image_graph(fp32, int8, [pixels[:16].numpy()], how)
    assert _float_conv_weights(int8) == left_fp32
    with torch.inference_mode():
        want = net(pixels[16:]).mean(dim=(2, 3)).numpy()
    got = open_session(int8).run(None, {"pixel_values": pixels[16:].numpy()})[0].mean(axis=(2, 3))
    cosine = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > 0.98  # quantised, still the same function of the pixels


def test_conv_groups_are_checked(tmp_path):
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(export_image_onnx(_SeparableNet().eval(), torch.zeros(2, 3, 32, 32)))
    assert conv_nodes(fp32, ()) == []
    with pytest.raises(ValueError, match="unknown conv group"):
        conv_nodes(fp32, ("first_layer",))


def test_sessions_keep_an_fp32_conv_between_int8_ones_in_fp32():
    """ONNX Runtime's WeightBiasQuantization would rewrite this Conv (between a DequantizeLinear and a QuantizeLinear)
    with per-tensor int8 weights: the channel whose weights are 1000x smaller would read 0. ``open_session`` turns
    that rewrite off."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[0.01, -0.02], [100.0, 50.0]], np.float32).reshape(2, 2, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "in_scale", "zero"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "in_scale", "zero"], ["xd"]),
         helper.make_node("Conv", ["xd", "w", "b"], ["conv"]),
         helper.make_node("QuantizeLinear", ["conv", "out_scale", "zero"], ["yq"]),
         helper.make_node("DequantizeLinear", ["yq", "out_scale", "zero"], ["y"])],
        "fp32_conv_between_int8_ones",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [numpy_helper.from_array(np.array(0.05, np.float32), "in_scale"),
         numpy_helper.from_array(np.array(0.001, np.float32), "out_scale"),
         numpy_helper.from_array(np.array(128, np.uint8), "zero"),
         numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).uniform(-3, 3, (1, 2, 3, 3)).astype(np.float32)
    dequantised = (np.clip(np.round(x / 0.05) + 128, 0, 255) - 128) * np.float32(0.05)
    want = np.einsum("c,nchw->nhw", weights[0, :, 0, 0], dequantised)  # the small channel, within the output's range
    got = open_session(model.SerializeToString()).run(None, {"x": x})[0][:, 0]
    np.testing.assert_allclose(got, want, atol=0.001)  # one output step
    assert np.abs(got).max() > 0.05
