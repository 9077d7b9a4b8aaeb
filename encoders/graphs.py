"""The exported encoder graphs of a model bundle, on the loading side: names, the verified manifest, sessions.

Imports neither torch nor transformers (the served model, ``encoders.served``, starts without them); the export
and quantisation side is ``encoders.runtime``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

GRAPH_DIR = "onnx"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: whole-tower graphs (1: backbones only)
TOKENIZER = "tokenizer.json"
# the graphs' outputs: the backbone's first (what a torch tower attached by ``use_graphs`` reads), then the tower's
TEXT_OUTPUTS = ("last_hidden_state", "shared_embedding")
IMAGE_OUTPUTS = ("feature_map", "shared_embedding", "pooled_features")
MODALITIES = ("text", "image")
PRECISIONS = ("fp32", "int8")


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


# ONNX Runtime's WeightBiasQuantization (a basic-level transformer) rewrites an fp32 Conv between a
# DequantizeLinear and a QuantizeLinear into an int8 one with per-tensor weights. Our int8 recipes leave such convs in
# fp32 on purpose: that rewrite of MobileNetV2's block-2 expansion conv (one output channel's weights 100x the
# others') destroyed the embeddings (cosine 0.008 to fp32; docs/benchmarks.md, "Fourteenth session"). No graph of
# the current recipes has the pattern, so their outputs do not change.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def open_session(model: bytes | str | Path, threads: int = 1, options=None):
    """An ONNX Runtime CPU session over a graph (bytes or file), with ``session_options(threads)`` unless
    ``options`` are given."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options or session_options(threads), providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)



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
