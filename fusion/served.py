"""The category classifier in numpy, for the served model: the fusion head and the lexical branch without torch or
scikit-learn, from the arrays the bundle saves (``fusion/model.safetensors``, ``lexical/lexical.npz``).

``classify`` is the one definition of how the head and the words are combined; the torch model
(``encoders.bundle.MultiModalModel.classify``) calls it with its torch head and its scikit-learn branch, the served
model with these.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

JOINT_ONLY = (1.0, 0.0, 0.0)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(1, keepdims=True)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


class ServedFusionHead:
    """``fusion.classifier.FusionClassifier.predict_proba`` in numpy (float64 inside): Linear, exact GELU, Linear,
    the same presence flags and late-fusion experts."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        self.image_dim, self.text_dim = int(config["image_dim"]), int(config["text_dim"])
        self.num_classes = int(config["num_classes"])
        self.expert_weights = tuple(float(w) for w in config.get("expert_weights", JOINT_ONLY))
        self._w1, self._b1 = weights["net.0.weight"].astype(np.float64), weights["net.0.bias"].astype(np.float64)
        self._w2, self._b2 = weights["net.3.weight"].astype(np.float64), weights["net.3.bias"].astype(np.float64)
        if self._w1.shape[1] != self.image_dim + self.text_dim + 2 or self._w2.shape[0] != self.num_classes:
            raise ValueError(f"fusion head weights {self._w1.shape}, {self._w2.shape} do not match its config")

    @classmethod
    def load(cls, folder: Path) -> ServedFusionHead:
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder / 'config.json'} not found: not a saved FusionClassifier")
        return cls(json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors")))

    def _joint_logits(self, image, text, image_present, text_present) -> np.ndarray:
        image_flag, text_flag = image_present.astype(np.float64)[:, None], text_present.astype(np.float64)[:, None]
        inputs = np.concatenate([image * image_flag, text * text_flag, image_flag, text_flag], axis=1)
        hidden = inputs @ self._w1.T + self._b1
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
        return hidden @ self._w2.T + self._b2

    def predict_proba(self, image_emb: np.ndarray | None, text_emb: np.ndarray | None,
                      image_present: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities float32 (n, C) (either embedding may be None), as the torch head gives them."""
        reference = image_emb if image_emb is not None else text_emb
        if reference is None:
            raise ValueError("the fusion head needs at least one of image_emb and text_emb")
        n = len(reference)
        image = np.zeros((n, self.image_dim)) if image_emb is None else np.asarray(image_emb, np.float64)
        text = np.zeros((n, self.text_dim)) if text_emb is None else np.asarray(text_emb, np.float64)
        if image.shape[1] != self.image_dim or text.shape[1] != self.text_dim:
            raise ValueError(f"expected image_emb (n, {self.image_dim}) and text_emb (n, {self.text_dim}), got "
                             f"{image.shape} and {text.shape}")
        if len(image) != len(text):
            raise ValueError(f"image_emb has {len(image)} rows but text_emb has {len(text)}")
        on = np.ones(n, bool)
        image_flag = (np.zeros(n, bool) if image_emb is None else on if image_present is None
                      else np.asarray(image_present, bool))
        text_flag = np.zeros(n, bool) if text_emb is None else on
        logits = self._joint_logits(image, text, image_flag, text_flag)
        if self.expert_weights == JOINT_ONLY or image_emb is None or text_emb is None:
            return _softmax(logits).astype(np.float32)
        both = on if image_present is None else np.asarray(image_present, bool)
        if not both.any():
            return _softmax(logits).astype(np.float32)
        ones, zeros = np.ones(int(both.sum()), bool), np.zeros(int(both.sum()), bool)
        experts = [self._joint_logits(image[both], text[both], *flags)
                   for flags in ((ones, ones), (zeros, ones), (ones, zeros))]
        out = _log_softmax(logits)
        out[both] = sum(w * _log_softmax(e) for w, e in zip(self.expert_weights, experts))
        return _softmax(out).astype(np.float32)


class ServedLexical:
    """``fusion.lexical.LexicalBranch`` in numpy: scikit-learn's TfidfVectorizer (word analyzer) and
    LogisticRegression recomputed from their fitted arrays (``LexicalBranch.save_arrays``)."""

    def __init__(self, arrays: dict[str, np.ndarray], settings: dict, num_classes: int,
                 weights: dict[str, tuple[float, float]]):
        self.num_classes = int(num_classes)
        self.weights = {mode: tuple(float(w) for w in pair) for mode, pair in weights.items()}
        self.vocabulary = {term: i for i, term in enumerate(arrays["terms"].tolist())}
        self.idf = arrays["idf"].astype(np.float64)
        self.coef = arrays["coef"].astype(np.float64)
        self.intercept = arrays["intercept"].astype(np.float64)
        self.classes = arrays["classes"].astype(np.int64)
        self.lowercase = bool(settings["lowercase"])
        self.token_pattern = re.compile(settings["token_pattern"])
        self.ngram_range = tuple(int(n) for n in settings["ngram_range"])
        self.sublinear_tf = bool(settings["sublinear_tf"])
        self.binary = bool(settings["binary"])
        self.norm = settings["norm"]
        if self.norm not in ("l2", "l1", None):
            raise ValueError(f"unsupported TF-IDF norm {self.norm!r}")

    def analyze(self, text: str) -> list[str]:
        """The terms scikit-learn's word analyzer makes of ``text`` (lowercase, token pattern, word n-grams)."""
        tokens = self.token_pattern.findall(text.lower() if self.lowercase else text)
        low, high = self.ngram_range
        terms = list(tokens) if low == 1 else []
        for n in range(max(low, 2), min(high, len(tokens)) + 1):
            terms += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return terms

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """The regression's scores (n, len(classes)) of the texts' TF-IDF vectors."""
        out = np.tile(self.intercept, (len(texts), 1))
        for row, text in enumerate(texts):
            counts = Counter(self.vocabulary[t] for t in self.analyze(text) if t in self.vocabulary)
            if not counts:
                continue
            columns = np.fromiter(counts.keys(), np.int64, len(counts))
            tf = np.ones(len(counts)) if self.binary else np.fromiter(counts.values(), np.float64, len(counts))
            if self.sublinear_tf:
                tf = np.log(tf) + 1.0
            values = tf * self.idf[columns]
            if self.norm == "l2":
                values /= max(float(np.sqrt((values**2).sum())), 1e-300)
            elif self.norm == "l1":
                values /= max(float(np.abs(values).sum()), 1e-300)
            out[row] += self.coef[:, columns] @ values
        return out

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """float64 (n, num_classes) log-probabilities of the words alone (as ``LexicalBranch.log_proba``)."""
        scores = self.decision(list(texts))
        if len(self.classes) <= 2:  # scikit-learn: a binary regression is one logistic score
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            probs = np.stack([1.0 - positive, positive], axis=1)
            with np.errstate(divide="ignore"):
                log_probs = np.log(probs)
        else:
            log_probs = _log_softmax(scores)
        out = np.full((len(texts), self.num_classes), np.log(1e-12))
        out[:, self.classes] = log_probs
        return out

    def pool(self, head_probs: np.ndarray, texts: Sequence[str], mode: str) -> np.ndarray:
        return pool_with_words(head_probs, self.log_proba(texts), self.weights[mode])

    @classmethod
    def load(cls, folder: Path) -> ServedLexical:
        from fusion.lexical import ARRAYS_FILE, read_config

        folder = Path(folder)
        config = read_config(folder)
        path = folder / ARRAYS_FILE
        if not path.is_file() or "arrays" not in config:
            raise FileNotFoundError(f"{path} missing: the lexical branch has no numpy arrays (saved before they "
                                    f"existed); run `marketsearch export-onnx`")
        with np.load(path, allow_pickle=False) as arrays:
            return cls(dict(arrays), config["arrays"], config["num_classes"], config["weights"])


def pool_with_words(head_probs: np.ndarray, words_log_probs: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    """The head's probabilities (n, C) pooled log-linearly with the words' log-probabilities, renormalised."""
    head_weight, words_weight = weights
    head = np.log(np.clip(np.asarray(head_probs, np.float64), 1e-12, None))
    scores = head_weight * head + words_weight * words_log_probs
    scores -= scores.max(1, keepdims=True)
    probs = np.exp(scores)
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def classify(head, lexical, embed_dim: int, text_emb: np.ndarray | None, image_emb: np.ndarray | None,
             texts: list[str] | None = None) -> np.ndarray:
    """Category probabilities float32 (n, C) from a fusion ``head`` (``predict_proba``, ``num_classes``) and an
    optional ``lexical`` branch (``pool``); see ``encoders.bundle.MultiModalModel.classify``."""
    probs = _head_probs(head, embed_dim, text_emb, image_emb)
    if lexical is None or texts is None or text_emb is None:
        return probs
    if isinstance(texts, str) or len(texts) != len(probs):
        raise ValueError(f"texts must be a list of {len(probs)} strings, one per embedding row")
    text = np.atleast_2d(np.asarray(text_emb, np.float32))
    with_text = np.abs(text).sum(1) > 0
    with_photo = np.zeros(len(probs), bool) if image_emb is None else \
        np.abs(np.atleast_2d(np.asarray(image_emb, np.float32))).sum(1) > 0
    for mode, rows in (("fused", with_text & with_photo), ("text", with_text & ~with_photo)):
        if rows.any():
            probs[rows] = lexical.pool(probs[rows], [texts[i] for i in np.flatnonzero(rows)], mode)
    return probs


def _head_probs(head, embed_dim: int, text_emb: np.ndarray | None, image_emb: np.ndarray | None) -> np.ndarray:
    if text_emb is None and image_emb is None:
        raise ValueError("classify needs text_emb, image_emb or both")
    text = None if text_emb is None else np.atleast_2d(np.asarray(text_emb, np.float32))
    image = None if image_emb is None else np.atleast_2d(np.asarray(image_emb, np.float32))
    for name, value in (("text_emb", text), ("image_emb", image)):
        if value is not None and value.shape[1] != embed_dim:
            raise ValueError(f"{name} must have {embed_dim} columns, got shape {value.shape}")
    if text is not None and image is not None:
        if len(text) != len(image):
            raise ValueError(f"text_emb has {len(text)} rows but image_emb has {len(image)}")
        text_present = np.abs(text).sum(1) > 0
        image_present = np.abs(image).sum(1) > 0
        probs = np.empty((len(text), head.num_classes), np.float32)
        both = text_present | ~image_present  # rows with text (or neither: fall back to text zeros)
        if both.any():
            probs[both] = head.predict_proba(image[both], text[both], image_present=image_present[both])
        if (~both).any():
            probs[~both] = head.predict_proba(image[~both], None)
        return probs
    if text is not None:
        return head.predict_proba(None, text)
    return head.predict_proba(image, None)
