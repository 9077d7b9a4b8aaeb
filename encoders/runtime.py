"""Encoder graphs for ONNX Runtime as bundle artefacts: export, int8 quantisation, verified loading.

`marketsearch export-onnx` (a step of `build`) writes, beside the model bundle's weights::

    model/onnx/manifest.json     the model fingerprint the graphs were exported from, each graph's file name,
                                 sha256 and size, the ONNX Runtime version, the quality gates (evaluation)
    model/onnx/text.fp32.onnx    text backbone: input_ids, attention_mask -> last_hidden_state
    model/onnx/text.int8.onnx    the same, dynamically quantised (7-bit int8 weights per channel, activations per batch)
    model/onnx/image.fp32.onnx   image backbone: pixel_values -> feature_map
    model/onnx/image.int8.onnx   the same, statically quantised (QDQ) with ranges calibrated on catalogue photos;
                                 the backbone's recipe (``IMAGE_QUANTISATION``) may leave some convs in fp32

Only the backbones run in ONNX Runtime (they are almost all of an encode); pooling, the projection head and
normalisation stay in torch, so a tower's output is defined in one place. The service opens the graphs at
start (``GraphSet.open``) instead of exporting them: a manifest from other weights, a graph whose sha256
differs from the manifest or that ONNX Runtime cannot load raises ``GraphError`` with the reason, and the
service encodes in torch and says so in /health. Retraining replaces the whole bundle folder, graphs
included, so stale graphs never outlive their weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.files import make_temporary_dir, replace_dir, write_json_atomic
from encoders.backbones import ONNX_OPSET, export_text_onnx
from encoders.bundle import MultiModalModel

logger = logging.getLogger(__name__)

GRAPH_DIR = "onnx"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MODALITIES = ("text", "image")
PRECISIONS = ("fp32", "int8")
FP32_MAX_ABS_DIFF = 1e-4  # backbone outputs of an fp32 graph vs torch on the probe batch (measured ~1e-6)
CALIBRATION_PHOTOS = 128


class GraphError(RuntimeError):
    """An exported graph cannot be used (missing, from other weights, corrupted, or ONNX Runtime refuses it)."""


def graph_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / GRAPH_DIR


def graph_name(modality: str, precision: str) -> str:
    return f"{modality}.{precision}.onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def session_options(threads: int = 1):
    """The options every session of the service uses: ``threads`` intra-op threads that do not spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads must not spin: the cores are shared with other requests and processes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model: bytes | str | Path, threads: int = 1):
    """An ONNX Runtime CPU session over a graph (bytes or file)."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------ export


def export_image_onnx(net: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The image net as an ONNX graph ``pixel_values (batch dynamic, 3, H, W) -> feature_map``."""

    class _Net(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values)

    was_training = net.training
    net.eval()
    chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [log.level for log in chatty]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own passes; the graph is checked instead
            for log in chatty:
                log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
            program = torch.onnx.export(
                _Net(net), (example.contiguous(),), dynamo=True, verbose=False, opset_version=ONNX_OPSET,
                input_names=["pixel_values"], output_names=["feature_map"],
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
            )
    finally:
        for log, level in zip(chatty, levels):
            log.setLevel(level)
        net.train(was_training)
    return program.model_proto.SerializeToString()


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


def quantize_text_graph(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantisation (``onnxruntime.quantization.quantize_dynamic``): int8 weights of every MatMul,
    one scale per output channel and in 7 bits (``reduce_range``), activations quantised per batch at run
    time (VNNI int8 dot products on these CPUs). On the dev export 7-bit weights gave NDCG@10 0.11 points above
    fp32 where 8-bit gave 0.42 below, at the same speed (docs/benchmarks.md, `bench.text_int8_variants`).
    The embedding tables stay fp32: they are lookups, not arithmetic, and quantising them costs accuracy for
    no speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True, reduce_range=True)


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
    quant_format: str = "QDQ"  # or QOperator
    activations: str = "QUInt8"  # QuantType name of the activations (weights: QInt8, per output channel)


CONV_GROUPS = ("first_conv", "last_conv", "depthwise")

# The image backbones' int8 recipes, from the variants measured on the dev export (docs/benchmarks.md,
# `bench.image_int8_variants`). MobileNetV2: its first 6 convs (the stem and the first two inverted-residual
# blocks) stay fp32. Quantised, the float-vs-int8 SQNR of the block outputs fell from 38 to 15 dB across them
# (onnxruntime.quantization.qdq_loss_debug) and the gate lost 2 NDCG@10 points whatever the calibration;
# kept fp32, the drop is 0.
IMAGE_QUANTISATION = {"mobilenet_v2": ImageQuantisation(keep_first_convs=6)}


def image_quantisation_for(backbone_name: str) -> ImageQuantisation:
    return IMAGE_QUANTISATION.get(backbone_name, ImageQuantisation())


def conv_nodes(model_path: Path, groups: Iterable[str], first: int = 0) -> list[str]:
    """Names of the graph's Conv nodes in ``groups`` (``ImageQuantisation.keep_fp32``) or among its ``first``."""
    import onnx

    groups = set(groups)
    unknown = groups - set(CONV_GROUPS)
    if unknown:
        raise ValueError(f"unknown conv group(s) {sorted(unknown)}; choose from {CONV_GROUPS}")
    convs = [node for node in onnx.load(str(model_path)).graph.node if node.op_type == "Conv"]
    chosen = []
    for index, node in enumerate(convs):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (index < first or ("first_conv" in groups and index == 0)
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
            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType[how.activations],
            calibrate_method=CalibrationMethod[how.method],
            nodes_to_exclude=conv_nodes(prepared, how.keep_fp32, how.keep_first_convs),
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
    """Write the four graphs of ``model`` (a ``MultiModalModel``) and their manifest to ``target_dir``
    (staged beside it, swapped in whole). Returns the manifest. Gates are added later (``record_gates``).
    ``image_quantisation``: the int8 image recipe, by default the image backbone's (``image_quantisation_for``)."""
    how = image_quantisation or image_quantisation_for(model.image_tower.backbone.name)
    target_dir = Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(target_dir)
    try:
        text_backbone = model.text_tower.backbone
        probe = text_backbone.tokenize(["a short query", "a longer query, so that the probe batch has padding"])
        text_backbone.model.eval()
        fp32 = staging / graph_name("text", "fp32")
        fp32.write_bytes(export_text_onnx(text_backbone.model, (probe["input_ids"], probe["attention_mask"])))
        if int8:
            quantize_text_graph(fp32, staging / graph_name("text", "int8"))
        batches = calibration_batches(model.image_tower, calibration_photos)
        example = torch.from_numpy(batches[0][:2]) if batches else _blank_pixels(model.image_tower)
        image_fp32 = staging / graph_name("image", "fp32")
        image_fp32.write_bytes(export_image_onnx(model.image_tower.backbone.net, example))
        if int8:
            if not batches:
                raise ValueError("static int8 quantisation of the image graph needs catalogue photos to calibrate on")
            quantize_image_graph(image_fp32, staging / graph_name("image", "int8"), batches, how)
        manifest = _manifest(model.fingerprint, staging, calibration=len(calibration_photos))
        if int8:
            manifest["image_quantisation"] = asdict(how)
        write_json_atomic(staging / MANIFEST, manifest)
        replace_dir(staging, target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote ONNX graphs %s to %s", ", ".join(sorted(manifest["graphs"])), target_dir)
    return manifest


def _blank_pixels(image_tower) -> torch.Tensor:
    size = int(image_tower.backbone.preprocessing["crop"])
    return torch.zeros(2, 3, size, size)


def _manifest(fingerprint: str, folder: Path, calibration: int) -> dict:
    import onnxruntime as ort

    graphs = {}
    for modality in MODALITIES:
        for precision in PRECISIONS:
            path = folder / graph_name(modality, precision)
            if path.is_file():
                graphs[path.name] = {"modality": modality, "precision": precision, "sha256": sha256_file(path),
                                     "bytes": path.stat().st_size}
    return {"format_version": MANIFEST_VERSION, "model_fingerprint": fingerprint, "opset": ONNX_OPSET,
            "onnxruntime": ort.__version__, "torch": torch.__version__, "calibration_photos": calibration,
            "graphs": graphs, "gates": {}}


def record_gates(target_dir: Path, gates: dict) -> None:
    """Store quality-gate results (``{modality: {"passed": bool, ...}}``) in the manifest."""
    path = Path(target_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["gates"] = {**manifest.get("gates", {}), **gates}
    write_json_atomic(path, manifest)


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class GraphSet:
    """The verified manifest of a bundle's graph folder; opens sessions of its graphs."""

    folder: Path
    manifest: dict
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str | Path, fingerprint: str) -> GraphSet:
        """Read the manifest; raises GraphError when it is missing, unreadable or from other weights."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise GraphError(f"the model bundle has no exported ONNX graphs ({path} missing); run "
                             f"`marketsearch export-onnx`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise GraphError(f"unreadable graph manifest {path}: {error}") from error
        if manifest.get("format_version") != MANIFEST_VERSION:
            raise GraphError(f"graph manifest {path} has format_version {manifest.get('format_version')!r}, "
                             f"this code reads {MANIFEST_VERSION}; run `marketsearch export-onnx`")
        if manifest.get("model_fingerprint") != fingerprint:
            raise GraphError(f"the ONNX graphs in {folder} were exported from model "
                             f"{str(manifest.get('model_fingerprint'))[:12]}, not from the bundle's "
                             f"{fingerprint[:12]}; run `marketsearch export-onnx`")
        return cls(folder, manifest)

    def has(self, modality: str, precision: str) -> bool:
        return graph_name(modality, precision) in self.manifest.get("graphs", {})

    def gate(self, modality: str) -> dict | None:
        return self.manifest.get("gates", {}).get(modality)

    def choose_precision(self, modality: str, allow_int8: bool = True) -> tuple[str, str | None]:
        """int8 where its graph exists and its quality gate passed, else fp32; with the reason for fp32."""
        if not allow_int8:
            return "fp32", "int8 not enabled for this tower (MARKETSEARCH_ONNX_INT8)"
        if not self.has(modality, "int8"):
            return "fp32", "no int8 graph in the bundle"
        gate = self.gate(modality)
        if gate is None:
            return "fp32", "the int8 graph has no quality gate result (run `marketsearch export-onnx`)"
        if not gate.get("passed"):
            return "fp32", f"the int8 graph failed its quality gate: {gate.get('reason', 'no reason recorded')}"
        return "int8", None

    def verified_path(self, modality: str, precision: str) -> Path:
        """The graph file, after checking its sha256 against the manifest."""
        name = graph_name(modality, precision)
        entry = self.manifest.get("graphs", {}).get(name)
        if entry is None:
            raise GraphError(f"the graph manifest lists no {name}; run `marketsearch export-onnx`")
        path = self.folder / name
        if not path.is_file():
            raise GraphError(f"{path} is missing; run `marketsearch export-onnx`")
        if sha256_file(path) != entry["sha256"]:
            raise GraphError(f"{path} does not match its manifest (sha256 differs: corrupted or edited); "
                             f"run `marketsearch export-onnx`")
        return path

    def session(self, modality: str, precision: str, threads: int = 1):
        """A verified graph opened in ONNX Runtime; GraphError when it cannot be."""
        path = self.verified_path(modality, precision)
        try:
            return open_session(path, threads)
        except ImportError as error:
            raise GraphError("onnxruntime is not installed") from error
        except Exception as error:  # noqa: BLE001 - any load failure of the runtime means "cannot use it"
            raise GraphError(f"ONNX Runtime cannot load {path.name}: {type(error).__name__}: {error}") from error


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


def load_catalogue_encoder(model_dir: str | Path, *, runtime: str = "auto", threads: int = 1):
    """The model that encodes catalogue listings: the bundle's weights with both backbones in their fp32 graphs.

    ``runtime``: ``auto`` uses the graphs when `marketsearch export-onnx` wrote them and they verify, else torch;
    ``onnxruntime`` raises GraphError when they cannot be used; ``torch`` uses none. `marketsearch embed` and the
    serving processes' live follower both load their encoder here, so a listing written through the API and the
    same listing embedded in batch get the same vectors. fp32 only: int8 is for queries, behind its gate."""
    if runtime not in ("auto", "onnxruntime", "torch"):
        raise ValueError(f"runtime must be auto, onnxruntime or torch, got {runtime!r}")
    model = MultiModalModel.load(model_dir)
    if runtime == "torch":
        return model
    try:
        graphs = GraphSet.open(graph_dir(model_dir), model.fingerprint)
        for modality in ("text", "image"):
            use_graphs(model, graphs, modality, "fp32", threads=threads)
    except GraphError as error:
        if runtime == "onnxruntime":
            raise
        logger.warning("catalogue listings are encoded in torch: %s", error)
    return model
