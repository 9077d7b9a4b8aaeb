"""The served model: both towers as their exported ONNX graphs, the classifier in numpy; no torch, torchvision,
transformers or scikit-learn, so the service starts in the time it takes to open a few files.

``ServedModel.load(model_dir)`` reads what `marketsearch export-onnx` wrote into the bundle (``encoders.runtime``):
the graph manifest, which must name the bundle's fingerprint (from ``bundle.json``, written when the weights
were saved), graphs whose sha256 match it, the tokenizer file, the photo preprocessing. Anything else raises
``GraphError`` with the reason, and the caller serves the torch model (``encoders.bundle.MultiModalModel``)
instead. It answers what the search pipeline asks of a model: ``encode_texts``, ``encode_images``,
``image_tower.encode_with_pooled`` (the photo vectors), ``classify``, ``labels``, ``fingerprint``; loaded with
``int8=()`` it is also the catalogue encoder of `marketsearch embed` and the live follower
(``encoders.catalogue_encoder``), through the image tower's ``eval_transform``, ``photo_encoder`` (the graph run in
the decoding workers), ``encode_pixels_with_pooled`` and ``embed_pooled``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from catalog.labels import LabelEncoder
from encoders.graphs import (
    IMAGE_OUTPUTS,
    TEXT_OUTPUTS,
    TOKENIZER,
    GraphError,
    GraphSet,
    graph_dir,
    sha256_file,
)
from encoders.pixels import EvalPixels
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


class ServedHead:
    """The image tower's head (``encoders.modules.Projection``, then L2 normalisation) in numpy (float64 inside), from
    the bundle's arrays: the embeddings of pooled backbone features already computed (the training feature cache)."""

    LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which Projection uses

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        self.in_dim, self.out_dim = int(config["in_dim"]), int(config["out_dim"])
        self.hidden_dim, self.input_norm = int(config.get("hidden_dim", 0)), bool(config.get("input_norm", True))
        # Projection.net: [LayerNorm], Dropout, Linear[, GELU, Dropout, Linear]
        first = 2 if self.input_norm else 1
        linears = [first, first + 3] if self.hidden_dim > 0 else [first]
        try:
            self.norm = ((weights["net.0.weight"].astype(np.float64), weights["net.0.bias"].astype(np.float64))
                         if self.input_norm else None)
            self.linears = [(weights[f"net.{i}.weight"].astype(np.float64), weights[f"net.{i}.bias"].astype(np.float64))
                            for i in linears]
        except KeyError as error:
            raise ValueError(f"the projection weights have no {error}; its config: {config}") from error
        if self.linears[0][0].shape[1] != self.in_dim or self.linears[-1][0].shape[0] != self.out_dim:
            raise ValueError(f"projection weights {[w.shape for w, _ in self.linears]} do not match its config")

    @classmethod
    def load(cls, tower_dir: Path) -> ServedHead:
        """The Projection module of the tower saved at ``tower_dir`` (``encoders.towers.Tower.save``)."""
        from safetensors.numpy import load_file

        modules = json.loads((Path(tower_dir) / "tower.json").read_text())["modules"]
        entry = next((m for m in modules if m["type"] == "Projection"), None)
        if entry is None:
            raise ValueError(f"{tower_dir}/tower.json lists no Projection module")
        folder = Path(tower_dir) / entry["path"]
        return cls(json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors")))

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        """float32 (n, in_dim) pooled features -> float32 (n, out_dim) L2-normalised embeddings."""
        from scipy.special import erf  # scikit-learn's dependency; vectorised, where math.erf is per element

        x = np.asarray(pooled, np.float64)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected pooled features (n, {self.in_dim}), got {x.shape}")
        if self.norm is not None:
            centred = x - x.mean(1, keepdims=True)
            scale = np.sqrt((centred**2).mean(1, keepdims=True) + self.LAYER_NORM_EPS)
            x = centred / scale * self.norm[0] + self.norm[1]
        for index, (weight, bias) in enumerate(self.linears):
            x = x @ weight.T + bias
            if index < len(self.linears) - 1:
                x = 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))  # exact GELU, as torch.nn.GELU()
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class EncodedPhoto(NamedTuple):
    """One photo through the image tower: what ``ServedImageTower.encode_with_pooled`` gives for it."""

    embedding: np.ndarray  # float32 (embed_dim,)
    pooled: np.ndarray  # float32 (pooled_dim,)


class PhotoGraphEncoder:
    """A decoding worker's transform (``encoders.photo_stream``) that runs the image tower's graph as well: a photo
    -> its ``EncodedPhoto``, one photo a forward on one ONNX Runtime thread, so only two small vectors travel back
    to the parent. On 2 cores, two such workers encode catalogue photos at 0.68-0.90x (median 0.77) the parent's batched
    two-thread forward, where workers that only decode (600 KB of pixels a photo to the parent, whose forward
    stalls whenever a worker takes a core) reach 0.55-0.70x (docs/benchmarks.md, "Thirteenth session").

    Picklable: each process opens its own one-thread session on first use, through ``GraphSet.session`` with the
    manifest the parent read (a graph file replaced meanwhile, or one ONNX Runtime cannot load, raises
    ``GraphError``)."""

    def __init__(self, graphs: GraphSet, precision: str, preprocessing: dict):
        self.graphs, self.precision = graphs, precision
        self.pixels = EvalPixels(preprocessing)
        self._session = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}

    def __call__(self, image) -> EncodedPhoto:
        if self._session is None:
            self._session = self.graphs.session("image", self.precision, threads=1)
        embedding, pooled = self._session.run(ServedImageTower.outputs, {"pixel_values": self.pixels(image)[None]})
        return EncodedPhoto(embedding[0], pooled[0])


class ServedImageTower:
    """PIL images -> pixels (PIL + numpy) -> the whole image tower graph -> embeddings and pooled backbone vectors.

    For catalogue encoding (``encoders.embed``) it also runs the graph on pixels decoded elsewhere
    (``encode_pixels_with_pooled``, with ``eval_transform`` in the decoding workers) and the head alone on pooled
    features read from the training feature cache (``embed_pooled``, the folder named ``feature_cache_key``)."""

    modality = "image"
    outputs = list(IMAGE_OUTPUTS[1:])  # the embedding, the pooled backbone vector

    def __init__(self, session, preprocessing: dict, precision: str, embed_dim: int, pooled_dim: int,
                 head: ServedHead | None = None, feature_cache_key: str | None = None,
                 graphs: GraphSet | None = None):
        self.session, self.preprocessing = session, dict(preprocessing)
        self.pixels = EvalPixels(self.preprocessing)
        self.backbone = GraphRuntime(precision)
        self.embed_dim, self.pooled_dim = int(embed_dim), int(pooled_dim)
        self.head = head
        # None: the graphs were exported before the manifest recorded it; the cache is not read
        self.feature_cache_key = feature_cache_key
        self.graphs = graphs  # the graph set the session came from, for photo_encoder

    def eval_transform(self) -> EvalPixels:
        """``PIL image -> float32 (3, H, W)`` pixels, picklable (``encoders.photo_stream`` workers)."""
        return self.pixels

    def photo_encoder(self) -> PhotoGraphEncoder | None:
        """``PIL image -> EncodedPhoto`` in a decoding worker (``PhotoGraphEncoder``); None when the tower was
        built from a session without its graph set."""
        if self.graphs is None:
            return None
        return PhotoGraphEncoder(self.graphs, self.backbone.precision, self.preprocessing)

    def encode_pixels_with_pooled(self, pixels: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """``encode_with_pooled`` of preprocessed pixels float32 (n, 3, H, W), in batches of ``batch_size``."""
        pixels = np.asarray(pixels, np.float32)
        embeddings = np.empty((len(pixels), self.embed_dim), np.float32)
        pooled = np.empty((len(pixels), self.pooled_dim), np.float32)
        for start in range(0, len(pixels), batch_size):
            batch = np.ascontiguousarray(pixels[start : start + batch_size])
            embeddings[start : start + len(batch)], pooled[start : start + len(batch)] = self.session.run(
                self.outputs, {"pixel_values": batch})
        return embeddings, pooled

    def encode_with_pooled(self, images: list, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings float32 (n, embed_dim) and pooled backbone features (n, pooled_dim), as
        ``encoders.towers.Tower.encode_with_pooled``."""
        embeddings = np.empty((len(images), self.embed_dim), np.float32)
        pooled = np.empty((len(images), self.pooled_dim), np.float32)
        for start in range(0, len(images), batch_size):  # preprocessed a batch at a time: bounded memory
            rows = slice(start, start + batch_size)
            embeddings[rows], pooled[rows] = self.encode_pixels_with_pooled(self.pixels.stack(images[rows]),
                                                                            batch_size)
        return embeddings, pooled

    def encode(self, images: list, batch_size: int = 32) -> np.ndarray:
        return self.encode_with_pooled(images, batch_size)[0]

    def embed_pooled(self, pooled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Embeddings (as ``encode``) of pooled backbone features already computed, as
        ``encoders.towers.Tower.embed_pooled``."""
        if self.head is None:
            raise GraphError("the served image tower was loaded without its head")
        pooled = np.asarray(pooled, np.float32)
        if not len(pooled):
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate([self.head(pooled[s : s + batch_size]) for s in range(0, len(pooled), batch_size)])


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
        try:
            head = ServedHead.load(model_dir / "image_tower")
        except (OSError, ValueError, KeyError) as error:
            raise GraphError(f"the image tower's head cannot be read without torch: {error}") from error
        image = ServedImageTower(sessions["image"][0], manifest["image_preprocessing"], sessions["image"][1],
                                 embed_dim, pooled["image"], head=head,
                                 feature_cache_key=(manifest.get("feature_cache") or {}).get("image"), graphs=graphs)
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


def served_tower(graphs: GraphSet, modality: str, precision: str,
                 threads: int = 1) -> ServedTextTower | ServedImageTower:
    """``modality``'s tower as the service encodes queries with it: the whole tower graph ``precision`` of
    ``graphs``, tokenizer or pixels without torch (an image tower without its head arrays: it encodes photos but
    cannot ``embed_pooled``)."""
    manifest = graphs.manifest
    session = graphs.session(modality, precision, threads)
    embed_dim, pooled_dim = int(manifest["embed_dim"]), int(manifest["pooled_dim"][modality])
    if modality == "text":
        return ServedTextTower(session, load_tokenizer(graphs), precision, embed_dim, pooled_dim)
    return ServedImageTower(session, manifest["image_preprocessing"], precision, embed_dim, pooled_dim)


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
