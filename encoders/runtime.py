"""Encoder graphs for ONNX Runtime as bundle artefacts: export, int8 quantisation, verified loading.

`marketsearch export-onnx` (a step of `build`) writes, beside the model bundle's weights::

    model/onnx/manifest.json     the model fingerprint the graphs were exported from, each graph's file name,
                                 sha256 and size, the tokenizer and photo preprocessing of the towers, the ONNX
                                 Runtime version, the quality gates (evaluation)
    model/onnx/tokenizer.json    the text tower's tokenizer (``tokenizers``), its truncation and padding set
    model/onnx/text.fp32.onnx    the whole text tower: input_ids, attention_mask -> last_hidden_state (the
                                 backbone's output), shared_embedding (pooled, projected, L2-normalised); exported
                                 with TorchScript and fused by ONNX Runtime's BERT optimiser (Attention,
                                 EmbedLayerNormalization, SkipLayerNormalization, BiasGelu)
    model/onnx/text.int8.onnx    the same, dynamically quantised (7-bit int8 weights per channel of the MatMuls and
                                 the fused attention, QAttention; activations per batch); the pooling and
                                 projection head stay fp32
    model/onnx/image.fp32.onnx   the whole image tower: pixel_values -> feature_map (the backbone's output),
                                 shared_embedding (L2-normalised), pooled_features (the raw backbone vector,
                                 before the head)
    model/onnx/image.int8.onnx   the same, statically quantised (QOperator) with ranges calibrated on catalogue photos;
                                 the backbone's recipe (``IMAGE_QUANTISATION``) may leave some convs in fp32 and
                                 quantise the projection head's Linears; the pooling and norms stay fp32

One graph per tower and precision serves two callers. The served model (``encoders.served``) reads the towers'
outputs (``shared_embedding``, ``pooled_features``) and needs neither torch nor transformers, for queries and for
catalogue listings (``encoders.catalogue_encoder``); a torch tower may run only its backbone in the graph
(``use_graphs``: its first output), for the service's torch fallback and the benchmarks. The
service opens the graphs at start (``GraphSet.open``) instead of exporting them: a manifest from other weights,
a graph whose sha256 differs from the manifest or that ONNX Runtime cannot load raises ``GraphError`` with the
reason, and the service encodes in torch and says so in /health. Retraining replaces the whole bundle folder,
graphs included, so stale graphs never outlive their weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.files import make_temporary_dir, replace_dir, write_json_atomic
from encoders.backbones import ONNX_OPSET
from encoders.graphs import (  # noqa: F401 - the loading side, re-exported for the export side's callers
    GRAPH_DIR,
    IMAGE_OUTPUTS,
    MANIFEST,
    MANIFEST_VERSION,
    MODALITIES,
    PRECISIONS,
    TEXT_OUTPUTS,
    TOKENIZER,
    GraphError,
    GraphSet,
    graph_dir,
    graph_name,
    open_session,
    session_options,
    sha256_file,
)

logger = logging.getLogger(__name__)

FP32_MAX_ABS_DIFF = 1e-4  # backbone outputs of an fp32 graph vs torch on the probe batch (measured ~1e-6)
FP32_TOWER_MAX_ABS_DIFF = 1e-4  # embeddings of an fp32 whole-tower graph vs the torch tower at export
CALIBRATION_PHOTOS = 128
# The TorchScript text export's opset: the BERT optimiser's fusions match opset 17's graph; at opset 18 (ReduceMean
# axes as an input) it fused no Attention and no SkipLayerNormalization on MiniLM.
TORCHSCRIPT_TEXT_OPSET = 17


# ------------------------------------------------------------------------------------------------ export


class _ImageTowerGraph(torch.nn.Module):
    """The image tower as one function of its pixels, for export: (feature_map, embedding, pooled)."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values):
        feature_map = self.tower.backbone.net(pixel_values)
        pooled = self.tower.pooling({"feature_map": feature_map})["pooled"]
        return feature_map, self.tower.head(pooled), pooled


class _TextTowerGraph(torch.nn.Module):
    """The text tower as one function of its token ids, for export: (last_hidden_state, embedding)."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids, attention_mask):
        tokens = self.tower.backbone.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.tower.pooling({"token_embeddings": tokens, "attention_mask": attention_mask})["pooled"]
        return tokens, self.tower.head(pooled)


def _export(module: torch.nn.Module, inputs: tuple, input_names: list[str], output_names: tuple[str, ...],
            dynamic_shapes: dict) -> bytes:
    # each submodule's own mode back afterwards: a wrapper built for the export is in training mode, and
    # ``train(True)`` on it would switch the wrapped tower's dropout on
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [log.level for log in chatty]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own passes; the graph is checked instead
            for log in chatty:
                log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
            program = torch.onnx.export(
                module, inputs, dynamo=True, verbose=False, opset_version=ONNX_OPSET, input_names=input_names,
                output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            )
    finally:
        for log, level in zip(chatty, levels):
            log.setLevel(level)
        for sub, training in modes.items():
            sub.training = training
    return program.model_proto.SerializeToString()


def export_image_onnx(net: torch.nn.Module, example: torch.Tensor) -> bytes:
    """An image net alone as an ONNX graph ``pixel_values (batch dynamic, 3, H, W) -> feature_map``."""

    class _Net(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values)

    return _export(_Net(net), (example.contiguous(),), ["pixel_values"], ("feature_map",),
                   {"pixel_values": {0: torch.export.Dim("batch")}})


def export_image_tower_onnx(tower, example: torch.Tensor) -> bytes:
    """The whole image tower as an ONNX graph ``pixel_values (batch dynamic, 3, H, W) -> IMAGE_OUTPUTS``."""
    return _export(_ImageTowerGraph(tower), (example.contiguous(),), ["pixel_values"], IMAGE_OUTPUTS,
                   {"pixel_values": {0: torch.export.Dim("batch")}})


def export_text_tower_onnx(tower, example: dict) -> bytes:
    """The whole text tower as an ONNX graph ``input_ids, attention_mask (batch, seq dynamic) -> TEXT_OUTPUTS``,
    from the dynamo exporter. Its attention (SDPA with IsNaN/Where guards) is not fused by ONNX Runtime's BERT
    optimiser; ``export_fused_text_tower_onnx`` is the export the bundle keeps."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    return _export(_TextTowerGraph(tower), (example["input_ids"], example["attention_mask"]),
                   ["input_ids", "attention_mask"], TEXT_OUTPUTS,
                   {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})


def export_torchscript_text_tower_onnx(tower, example: dict) -> bytes:
    """The whole text tower through the TorchScript exporter (``dynamo=False``) with the backbone's eager
    attention: the graph whose attention, embeddings, layer norms and GELUs ONNX Runtime's BERT optimiser fuses.
    The backbone's attention implementation is put back afterwards."""
    import io

    model = tower.backbone.model
    attention = model.config._attn_implementation
    module = _TextTowerGraph(tower)
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    buffer = io.BytesIO()
    dynamic = {0: "batch", 1: "seq"}
    try:
        model.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                module, (example["input_ids"], example["attention_mask"]), buffer, dynamo=False,
                opset_version=TORCHSCRIPT_TEXT_OPSET, input_names=["input_ids", "attention_mask"],
                output_names=list(TEXT_OUTPUTS),
                dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, TEXT_OUTPUTS[0]: dynamic,
                              TEXT_OUTPUTS[1]: {0: "batch"}},
            )
    finally:
        model.set_attn_implementation(attention)
        for sub, training in modes.items():
            sub.training = training
    return buffer.getvalue()


def fuse_text_graph(source: Path, target: Path, config) -> dict:
    """ONNX Runtime's BERT optimiser (``onnxruntime.transformers.optimizer``, its Python fusions only: the graph
    stays portable across ONNX Runtime builds) on a text tower graph: Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu. Returns the count of each fused operator. ``config``: the backbone's
    Hugging Face config (heads and hidden size; 0 lets the optimiser read them from the graph)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", getattr(config, "n_heads", 0))
    hidden = getattr(config, "hidden_size", getattr(config, "dim", 0))
    with _quiet_quantizer():  # the optimiser, like the quantiser, logs through the root logger
        optimised = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    optimised.save_model_to_file(str(target))
    return {op: count for op, count in optimised.get_fused_operator_statistics().items() if count}


def export_fused_text_tower_onnx(tower, example: dict, target: Path) -> dict:
    """The bundle's fp32 text graph at ``target``: the TorchScript export fused by the BERT optimiser. On the dev
    export the served tower encoded a short query x1.06-x1.08 faster on the fused fp32 graph than on the dynamo
    graph, and x1.24 faster on its int8 graph (QAttention) than on the dynamo graph's int8, within the same gate
    (docs/benchmarks.md, `bench.text_int8_variants`). Returns the recipe for the manifest."""
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "exported.onnx"
        exported.write_bytes(export_torchscript_text_tower_onnx(tower, example))
        fused = fuse_text_graph(exported, target, tower.backbone.model.config)
    return {"exporter": "torchscript", "opset": TORCHSCRIPT_TEXT_OPSET, "attention": "eager",
            "optimiser": "onnxruntime.transformers bert", "fused": fused}


def head_nodes(model_path: Path, backbone_output: str, with_gemm: bool = True) -> list[str]:
    """Names of the nodes downstream of ``backbone_output`` (the pooling, projection head and normalisation of a
    whole-tower graph), which quantisation leaves fp32; ``with_gemm`` False: not the head's Gemm nodes (its
    Linears), which may then be quantised."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    reached, names = {backbone_output}, []
    for node in graph.node:  # ONNX graphs are stored in topological order
        if any(name in reached for name in node.input):
            reached.update(node.output)
            if with_gemm or node.op_type != "Gemm":
                names.append(node.name)
    return names


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs a line per tensor through the root logger at INFO; keep them at -v only."""
    root = logging.getLogger()
    level = root.level
    if not root.isEnabledFor(logging.DEBUG):
        root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class TextQuantisation:
    """How the text graph is dynamically quantised: which operators get int8 weights (``Attention``: the fused
    attention becomes ``QAttention``, its packed Q/K/V projection in int8), per output channel or per tensor,
    7-bit weights (``reduce_range``) or 8."""

    op_types: tuple[str, ...] = ("MatMul", "Attention")
    per_channel: bool = True
    reduce_range: bool = True


TEXT_QUANTISATION = TextQuantisation()


def quantize_text_graph(fp32_path: Path, int8_path: Path, how: TextQuantisation = TEXT_QUANTISATION) -> None:
    """Dynamic int8 quantisation (``onnxruntime.quantization.quantize_dynamic``): int8 weights of every MatMul
    and fused Attention, by default one scale per output channel and in 7 bits (``reduce_range``), activations
    quantised per batch at run time (VNNI int8 dot products on these CPUs). On the dev export 7-bit weights gave
    NDCG@10 0.11 points above fp32 where 8-bit gave 0.42 below, at the same speed (docs/benchmarks.md,
    `bench.text_int8_variants`). The embedding tables stay fp32: they are lookups, not arithmetic, and
    quantising them costs accuracy for no speed. The nodes after the backbone's output (pooling, projection
    head) stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = head_nodes(fp32_path, TEXT_OUTPUTS[0])
    # quantize_dynamic first rewrites each Gemm as a MatMul named "<gemm>_MatMul" (and an Add), then quantises
    head += [f"{name}_MatMul" for name in head]
    with _quiet_quantizer():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(how.op_types), per_channel=how.per_channel,
                         reduce_range=how.reduce_range, nodes_to_exclude=head,
                         # ONNX shape inference types no output of the fused (com.microsoft) operators
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class _PhotoBatches:
    """``onnxruntime.quantization.CalibrationDataReader`` over preprocessed catalogue photo batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixel_values": batch}


@dataclass(frozen=True)
class ImageQuantisation:
    """How the image graph is statically quantised. ``keep_fp32`` names groups of Conv nodes left in fp32:
    ``first_conv`` (the stem, fed raw pixels), ``last_conv`` (the 1x1 conv to the feature map the tower pools),
    ``depthwise`` (grouped convs: one 3x3 filter per channel, the classic int8 weak spot of MobileNets)."""

    method: str = "MinMax"  # onnxruntime.quantization.CalibrationMethod name: MinMax, Percentile, Entropy
    percentile: float = 99.999
    photos: int = CALIBRATION_PHOTOS  # how many the variants bench calibrates on; export-onnx passes its photos
    keep_fp32: tuple[str, ...] = ()
    keep_first_convs: int = 0  # also leave the first N Conv nodes (graph order: the stem, then block by block) fp32
    keep_convs: tuple[int, ...] = ()  # and these Conv nodes, by their index in graph order
    int8_head: bool = False  # quantise the projection head's Gemm nodes too (its norms and activations stay fp32)
    quant_format: str = "QDQ"  # or QOperator
    activations: str = "QUInt8"  # QuantType name of the activations (weights: QInt8)
    per_channel: bool = True  # weights: one scale per output channel (else one per tensor)


CONV_GROUPS = ("first_conv", "last_conv", "depthwise")

# The image backbones' int8 recipes, from the variants measured on the dev export (docs/benchmarks.md,
# `bench.image_int8_variants`). MobileNetV2: its first 6 convs (the stem and the first two inverted-residual
# blocks) stay fp32. Quantised, the float-vs-int8 SQNR of the block outputs fell from 38 to 15 dB across them
# (onnxruntime.quantization.qdq_loss_debug) and the gate lost 2 NDCG@10 points whatever the calibration;
# kept fp32, the drop is 0. QOperator format (QLinearConv nodes written into the graph) rather than QDQ (which
# ONNX Runtime fuses into the same kernels at load): the same rankings, and the faster graph in three interleaved
# screens out of three on the dev export (docs/benchmarks.md). The head's two Linears int8 (QGemm): their fp32
# weights (1440 x 512) were read from memory at every photo, 0.19 ms of the int8 graph's 4.6 ms; int8, the gate
# (now judged on the whole graph, head included) moved from 0.42 to 0.37 points of drop.
IMAGE_QUANTISATION = {"mobilenet_v2": ImageQuantisation(keep_first_convs=6, quant_format="QOperator", int8_head=True)}


def image_quantisation_for(backbone_name: str) -> ImageQuantisation:
    return IMAGE_QUANTISATION.get(backbone_name, ImageQuantisation())


def conv_nodes(model_path: Path, groups: Iterable[str], first: int = 0, indices: Iterable[int] = ()) -> list[str]:
    """Names of the graph's Conv nodes in ``groups`` (``ImageQuantisation.keep_fp32``), among its ``first`` or at
    one of ``indices`` (graph order)."""
    import onnx

    groups, indices = set(groups), set(indices)
    unknown = groups - set(CONV_GROUPS)
    if unknown:
        raise ValueError(f"unknown conv group(s) {sorted(unknown)}; choose from {CONV_GROUPS}")
    convs = [node for node in onnx.load(str(model_path)).graph.node if node.op_type == "Conv"]
    chosen = []
    for index, node in enumerate(convs):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (index < first or index in indices or ("first_conv" in groups and index == 0)
                or ("last_conv" in groups and index == len(convs) - 1) or ("depthwise" in groups and group > 1)):
            chosen.append(node.name)
    return chosen


def quantize_image_graph(fp32_path: Path, int8_path: Path, calibration: Iterable[np.ndarray],
                         how: ImageQuantisation = ImageQuantisation()) -> None:
    """Static int8 quantisation (``onnxruntime.quantization.quantize_static``; by default QDQ format,
    per-channel int8 weights, uint8 activations) with activation ranges calibrated on ``calibration`` batches
    of preprocessed catalogue photos (float32 (n, 3, H, W))."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch, _quiet_quantizer():
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Calibration holds every activation of every photo (~28 MB a photo for MobileNetV2 at 224 px).
        # CalibMaxIntermediateOutputs would bound that, but ONNX Runtime 1.32's MinMax calibrator drops the
        # batches it clears instead of merging their ranges, so it is not used.
        extra = {"CalibPercentile": how.percentile} if how.method == "Percentile" else {}
        quantize_static(
            str(prepared), str(int8_path), _PhotoBatches(calibration), quant_format=QuantFormat[how.quant_format],
            per_channel=how.per_channel, weight_type=QuantType.QInt8, activation_type=QuantType[how.activations],
            calibrate_method=CalibrationMethod[how.method],
            nodes_to_exclude=conv_nodes(prepared, how.keep_fp32, how.keep_first_convs, how.keep_convs)
            + head_nodes(prepared, IMAGE_OUTPUTS[0], with_gemm=not how.int8_head),
            extra_options=extra,
        )


def calibration_batches(image_tower, photo_paths: list[Path], batch_size: int = 16) -> list[np.ndarray]:
    """Preprocessed (eval transform) batches of ``photo_paths`` for static quantisation."""
    from PIL import Image

    transform = image_tower.backbone.transforms(train=False)
    tensors = []
    for path in photo_paths:
        with Image.open(path) as image:
            tensors.append(transform(image.convert("RGB")))
    return [torch.stack(tensors[s : s + batch_size]).numpy() for s in range(0, len(tensors), batch_size)]


def export_graphs(model, target_dir: Path, calibration_photos: list[Path], *, int8: bool = True,
                  image_quantisation: ImageQuantisation | None = None) -> dict:
    """Write the four whole-tower graphs of ``model`` (a ``MultiModalModel``), the text tower's tokenizer and their
    manifest to ``target_dir`` (staged beside it, swapped in whole). Returns the manifest. The fp32 graphs must
    give the torch towers' embeddings on a probe batch (ValueError otherwise). Gates are added later
    (``record_gates``). ``image_quantisation``: the int8 image recipe, by default the image backbone's
    (``image_quantisation_for``). A lexical branch without its numpy arrays (a bundle saved before they
    existed) gets them written beside its pickle."""
    how = image_quantisation or image_quantisation_for(model.image_tower.backbone.name)
    target_dir = Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(target_dir)
    try:
        text_tower = model.text_tower
        probe = _probe(text_tower)
        fp32 = staging / graph_name("text", "fp32")
        text_graph = export_fused_text_tower_onnx(text_tower, probe, fp32)
        _check_tower_graph(fp32, text_tower, probe)
        if int8:
            quantize_text_graph(fp32, staging / graph_name("text", "int8"), TEXT_QUANTISATION)
        tokenizer = save_tokenizer(text_tower.backbone, staging / TOKENIZER)
        batches = calibration_batches(model.image_tower, calibration_photos)
        example = torch.from_numpy(batches[0][:2]) if batches else _blank_pixels(model.image_tower)
        image_fp32 = staging / graph_name("image", "fp32")
        image_fp32.write_bytes(export_image_tower_onnx(model.image_tower, example))
        _check_tower_graph(image_fp32, model.image_tower, _probe(model.image_tower))
        if int8:
            if not batches:
                raise ValueError("static int8 quantisation of the image graph needs catalogue photos to calibrate on")
            quantize_image_graph(image_fp32, staging / graph_name("image", "int8"), batches, how)
        manifest = _manifest(model, staging, calibration=len(calibration_photos), tokenizer=tokenizer)
        manifest["text_graph"] = text_graph
        if int8:
            manifest["text_quantisation"] = asdict(TEXT_QUANTISATION)
            manifest["image_quantisation"] = asdict(how)
        write_json_atomic(staging / MANIFEST, manifest)
        replace_dir(staging, target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if model.lexical is not None:
        bundle_dir = target_dir.parent
        if (bundle_dir / "lexical").is_dir() and not model.lexical.arrays_path(bundle_dir / "lexical").is_file():
            model.lexical.save_arrays(bundle_dir / "lexical")
    logger.info("wrote ONNX graphs %s to %s", ", ".join(sorted(manifest["graphs"])), target_dir)
    return manifest


def save_tokenizer(backbone, path: Path) -> dict:
    """The text backbone's tokenizer as a ``tokenizers`` file, with the truncation and padding its ``tokenize``
    asks for (at most ``max_length`` tokens, padded to the batch's longest on the right); returns those settings."""
    fast = getattr(backbone.tokenizer, "backend_tokenizer", None)
    if fast is None:
        raise ValueError(f"the text backbone's tokenizer ({type(backbone.tokenizer).__name__}) is not a fast "
                         f"tokenizer; the served model needs its tokenizers file")
    tokenizer = type(fast).from_str(fast.to_str())
    tokenizer.enable_truncation(backbone.max_length)
    pad_token = backbone.tokenizer.pad_token
    tokenizer.enable_padding(pad_id=backbone.tokenizer.pad_token_id, pad_token=pad_token,
                             pad_type_id=backbone.tokenizer.pad_token_type_id,
                             direction=backbone.tokenizer.padding_side)
    tokenizer.save(str(path))
    return {"file": path.name, "sha256": sha256_file(path), "max_length": backbone.max_length}


def _check_tower_graph(path: Path, tower, probe: dict) -> None:
    """The fp32 graph at ``path`` must give the tower's embeddings (and pooled vectors) on ``probe``."""
    session = open_session(path)
    feed = {name: value.numpy() for name, value in probe.items()}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    with torch.inference_mode():
        features = tower.forward(dict(probe))
    embedding = got[TEXT_OUTPUTS[1]]  # the same name as IMAGE_OUTPUTS[1]
    diffs = {"embedding": float(np.abs(embedding - features["embedding"].numpy()).max())}
    if IMAGE_OUTPUTS[2] in got:
        diffs["pooled"] = float(np.abs(got[IMAGE_OUTPUTS[2]] - features["pooled"].numpy()).max())
    if not max(diffs.values()) <= FP32_TOWER_MAX_ABS_DIFF:
        raise ValueError(f"the exported {path.name} differs from the torch tower on a probe batch ({diffs}; allowed "
                         f"{FP32_TOWER_MAX_ABS_DIFF})")


def _blank_pixels(image_tower) -> torch.Tensor:
    size = int(image_tower.backbone.preprocessing["crop"])
    return torch.zeros(2, 3, size, size)


def _manifest(model, folder: Path, calibration: int, tokenizer: dict) -> dict:
    import onnxruntime as ort

    graphs = {}
    for modality in MODALITIES:
        for precision in PRECISIONS:
            path = folder / graph_name(modality, precision)
            if path.is_file():
                graphs[path.name] = {"modality": modality, "precision": precision, "sha256": sha256_file(path),
                                     "bytes": path.stat().st_size}
    image = model.image_tower
    return {"format_version": MANIFEST_VERSION, "model_fingerprint": model.fingerprint, "opset": ONNX_OPSET,
            "onnxruntime": ort.__version__, "torch": torch.__version__, "calibration_photos": calibration,
            "embed_dim": model.embed_dim, "tokenizer": tokenizer,
            "image_preprocessing": image.backbone.get_config_dict()["preprocessing"],
            "pooled_dim": {"text": model.text_tower.pooled_dim, "image": image.pooled_dim},
            # the training feature cache's folder for this image backbone, which the served model cannot compute
            # without torch (``encoders.features.backbone_key``): catalogue encoding reads cached photos from it
            "feature_cache": {"image": image.feature_cache_key},
            "graphs": graphs, "gates": {}}


def record_gates(target_dir: Path, gates: dict) -> None:
    """Store quality-gate results (``{modality: {"passed": bool, ...}}``) in the manifest."""
    path = Path(target_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["gates"] = {**manifest.get("gates", {}), **gates}
    write_json_atomic(path, manifest)


# ------------------------------------------------------------------------------------------------ loading


def use_graphs(model, graphs: GraphSet, modality: str, precision: str, threads: int = 1) -> None:
    """Run ``modality``'s backbone of ``model`` through the graph ``precision``; an fp32 graph must give the
    torch outputs on a probe batch (an int8 graph is judged by its quality gate instead). GraphError when not."""
    tower = model.text_tower if modality == "text" else model.image_tower
    session = graphs.session(modality, precision, threads)
    backbone = tower.backbone
    backbone.detach_session()
    probe = _probe(tower)
    with torch.inference_mode():
        want = backbone.forward(dict(probe))["feature_map" if modality == "image" else "token_embeddings"]
    backbone.attach_session(session, precision)
    try:
        with torch.inference_mode():
            got = backbone.forward(dict(probe))["feature_map" if modality == "image" else "token_embeddings"]
    except Exception as error:  # noqa: BLE001
        backbone.detach_session()
        raise GraphError(f"{graph_name(modality, precision)} fails on a probe batch: "
                         f"{type(error).__name__}: {error}") from error
    if got.shape != want.shape or not torch.isfinite(got).all():
        backbone.detach_session()
        raise GraphError(f"{graph_name(modality, precision)} gives {tuple(got.shape)} outputs (torch: "
                         f"{tuple(want.shape)}) or non-finite values")
    if precision == "fp32":
        if modality == "text":
            real = probe["attention_mask"].bool()
            diff = float((got - want).abs()[real].max())
        else:
            diff = float((got - want).abs().max())
        if not diff <= FP32_MAX_ABS_DIFF:
            backbone.detach_session()
            raise GraphError(f"{graph_name(modality, precision)} differs from torch by {diff:.2e} "
                             f"(allowed {FP32_MAX_ABS_DIFF})")


def _probe(tower) -> dict:
    if tower.modality == "text":
        return tower.backbone.tokenize(["a short query", "a longer query, so that the probe batch has padding in it"])
    size = int(tower.backbone.preprocessing["crop"])
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.rand(2, 3, size, size, generator=generator) * 2 - 1}
