"""The served model: both towers as their exported ONNX graphs, the classifier in numpy; no torch, torchvision,
transformers or scikit-learn, so the service starts in the time it takes to open a few files.

``ServedModel.load(model_dir)`` reads what `marketsearch export-onnx` wrote into the bundle (``encoders.runtime``):
the graph manifest, which must name the bundle's fingerprint (from ``bundle.json``, written when the weights
were saved), graphs whose sha256 match it, the tokenizer file, the photo preprocessing. Anything else raises
``GraphError`` with the reason, and the caller serves the torch model (``encoders.bundle.MultiModalModel``)
instead. It answers what the search pipeline asks of a model: ``encode_texts``, ``encode_images``,
``image_tower.encode_with_pooled`` (the photo vectors), ``classify``, ``labels``, ``fingerprint``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.labels import LabelEncoder
from encoders.graphs import IMAGE_OUTPUTS, TEXT_OUTPUTS, TOKENIZER, GraphError, GraphSet, graph_dir, sha256_file
from encoders.pixels import eval_pixels
from encoders.query_model import QueryModel
from fusion.served import ServedFusionHead, ServedLexical

BUNDLE_FORMAT_VERSION = 1  # encoders.bundle.FORMAT_VERSION, read here without importing torch


@dataclass(frozen=True)
class GraphRuntime:
    """Where a served tower runs, in the terms /health reports for the torch towers' backbones."""

    precision: str
    runtime: str = "onnxruntime"


class ServedTextTower:
    """Texts -> tokenizer (``tokenizers``) -> the whole text tower graph -> L2-normalised embeddings."""

    modality = "text"
    outputs = [TEXT_OUTPUTS[1]]

    def __init__(self, session, tokenizer, precision: str, embed_dim: int, pooled_dim: int):
        self.session, self.tokenizer = session, tokenizer
        self.backbone = GraphRuntime(precision)
        self.embed_dim, self.pooled_dim = int(embed_dim), int(pooled_dim)

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([str(text) for text in texts])
        return {"input_ids": np.array([e.ids for e in encodings], np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 (n, embed_dim); batched by length (less padding), in input order."""
        out = np.empty((len(texts), self.embed_dim), np.float32)
        order = np.argsort([-len(str(t)) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self.session.run(self.outputs, self.tokenize([texts[i] for i in rows]))[0]
        return out


class ServedImageTower:
    """PIL images -> pixels (PIL + numpy) -> the whole image tower graph -> embeddings and pooled backbone vectors."""

    modality = "image"
    outputs = list(IMAGE_OUTPUTS[1:])  # the embedding, the pooled backbone vector

    def __init__(self, session, preprocessing: dict, precision: str, embed_dim: int, pooled_dim: int):
        self.session, self.preprocessing = session, dict(preprocessing)
        self.backbone = GraphRuntime(precision)
        self.embed_dim, self.pooled_dim = int(embed_dim), int(pooled_dim)

    def encode_with_pooled(self, images: list, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings float32 (n, embed_dim) and pooled backbone features (n, pooled_dim), as
        ``encoders.towers.Tower.encode_with_pooled``."""
        embeddings = np.empty((len(images), self.embed_dim), np.float32)
        pooled = np.empty((len(images), self.pooled_dim), np.float32)
        for start in range(0, len(images), batch_size):
            pixels = eval_pixels(images[start : start + batch_size], self.preprocessing)
            embeddings[start : start + len(pixels)], pooled[start : start + len(pixels)] = self.session.run(
                self.outputs, {"pixel_values": pixels})
        return embeddings, pooled

    def encode(self, images: list, batch_size: int = 32) -> np.ndarray:
        return self.encode_with_pooled(images, batch_size)[0]


class ServedModel(QueryModel):
    """The query side of ``encoders.bundle.MultiModalModel`` from the bundle's graphs and arrays."""

    def __init__(self, text_tower: ServedTextTower, image_tower: ServedImageTower, fusion: ServedFusionHead,
                 labels: LabelEncoder, fingerprint: str, lexical: ServedLexical | None = None,
                 info: dict | None = None, backbones: dict | None = None):
        self.text_tower, self.image_tower = text_tower, image_tower
        self.fusion, self.lexical, self.labels = fusion, lexical, labels
        self.fingerprint = fingerprint
        self.info, self.backbones = dict(info or {}), dict(backbones or {})

    @property
    def embed_dim(self) -> int:
        return self.text_tower.embed_dim

    @classmethod
    def load(cls, model_dir: str | Path, *, int8: tuple[str, ...] = ("text", "image"),
             threads: int = 1) -> tuple[ServedModel, dict[str, str]]:
        """The served model of the bundle at ``model_dir`` and, per tower served in fp32, why not int8 (int8 where
        ``int8`` names the tower and its quality gate passed). GraphError when the graphs cannot be used."""
        model_dir = Path(model_dir)
        bundle = _bundle_manifest(model_dir)
        graphs = GraphSet.open(graph_dir(model_dir), bundle["fingerprint"])
        manifest = graphs.manifest
        notes: dict[str, str] = {}
        sessions = {}
        for modality in ("text", "image"):
            precision, note = graphs.choose_precision(modality, allow_int8=modality in int8)
            if note:
                notes[modality] = f"fp32 graph served: {note}"
            sessions[modality] = (graphs.session(modality, precision, threads), precision)
            outputs = {output.name for output in sessions[modality][0].get_outputs()}
            wanted = set((ServedImageTower if modality == "image" else ServedTextTower).outputs)
            if not wanted <= outputs:
                raise GraphError(f"the {modality} graph has no {sorted(wanted - outputs)} output(s) (exported "
                                 f"before whole-tower graphs); run `marketsearch export-onnx`")
        embed_dim, pooled = int(manifest["embed_dim"]), manifest["pooled_dim"]
        text_session, text_precision = sessions["text"]
        text = ServedTextTower(text_session, load_tokenizer(graphs), text_precision, embed_dim, pooled["text"])
        image = ServedImageTower(sessions["image"][0], manifest["image_preprocessing"], sessions["image"][1],
                                 embed_dim, pooled["image"])
        _check_on_probe(text, image)
        try:
            fusion = ServedFusionHead.load(model_dir / "fusion")
            lexical = ServedLexical.load(model_dir / "lexical") if (model_dir / "lexical").is_dir() else None
            labels = LabelEncoder.from_json(model_dir / "labels.json")
        except (OSError, ValueError, KeyError) as error:
            raise GraphError(f"the bundle's classifier cannot be served without torch: {error}") from error
        if fusion.num_classes != len(labels) or (lexical is not None and lexical.num_classes != len(labels)):
            raise GraphError(f"the classifier has {fusion.num_classes} classes but the label encoder {len(labels)}")
        return cls(text, image, fusion, labels, bundle["fingerprint"], lexical, info=bundle.get("info"),
                   backbones=bundle.get("backbones")), notes


def _bundle_manifest(model_dir: Path) -> dict:
    path = model_dir / "bundle.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {model_dir} (bundle.json missing); train one with "
                                f"`marketsearch train`")
    bundle = json.loads(path.read_text())
    if bundle.get("format_version") != BUNDLE_FORMAT_VERSION or not bundle.get("fingerprint"):
        raise GraphError(f"model bundle {model_dir} has format_version {bundle.get('format_version')!r} or no "
                         f"fingerprint; the served model reads version {BUNDLE_FORMAT_VERSION}")
    return bundle


def load_tokenizer(graphs: GraphSet):
    """The verified tokenizer file of the graph folder, with the tower's truncation and padding."""
    from tokenizers import Tokenizer

    entry = graphs.manifest.get("tokenizer") or {}
    path = graphs.folder / entry.get("file", TOKENIZER)
    if not path.is_file():
        raise GraphError(f"{path} is missing; run `marketsearch export-onnx`")
    if sha256_file(path) != entry.get("sha256"):
        raise GraphError(f"{path} does not match its manifest (sha256 differs); run `marketsearch export-onnx`")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - any parse failure means "cannot use it"
        raise GraphError(f"tokenizers cannot load {path.name}: {error}") from error
    truncation = tokenizer.truncation or {}
    if truncation.get("max_length") != entry.get("max_length") or tokenizer.padding is None:
        raise GraphError(f"{path.name} truncates at {truncation.get('max_length')} tokens (the tower: "
                         f"{entry.get('max_length')}) or does not pad; run `marketsearch export-onnx`")
    return tokenizer


def _check_on_probe(text: ServedTextTower, image: ServedImageTower) -> None:
    """The graphs run and give unit vectors of the manifest's sizes (their weights are bound by the sha256s)."""
    from PIL import Image

    try:
        got = [text.encode(["a short query", "a longer query, so that the probe batch has padding in it"]),
               *image.encode_with_pooled([Image.new("RGB", (64, 48), (120, 80, 40))])]
    except Exception as error:  # noqa: BLE001
        raise GraphError(f"the graphs fail on a probe batch: {type(error).__name__}: {error}") from error
    norms = np.linalg.norm(np.concatenate([got[0], got[1]]), axis=1)
    if not all(np.isfinite(g).all() for g in got) or not np.allclose(norms, 1.0, atol=1e-3):
        raise GraphError("the graphs give non-finite or non-normalised embeddings on a probe batch")
