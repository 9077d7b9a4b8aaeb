"""The lexical branch of the category classifier: a bag of words beside the fusion head.

A TF-IDF bag of words (title + description, unigrams and bigrams) with a logistic regression, pooled
log-linearly with the fusion head's log-probabilities:
``log p = w_head * log p(head) + w_words * log p(words)`` (then renormalised), with one pair of weights for
text-only queries and one for text + photo. On the dev export the words alone match the frozen MiniLM text
tower (0.777 against 0.778 test accuracy) and the two are complementary (0.826 pooled, text only), because the
tower is frozen and sees a sentence embedding, the words see exact model names and brands
(``docs/benchmarks.md``, "Lexical branch"). Photo-only queries have no words and skip the branch.

The regression's C is chosen on the validation listings by accuracy, the pooling weights on the same
listings by cross-entropy (as ``fusion.classifier.fit_expert_weights``): never on the training listings,
where the head and the words have both been fitted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion.served import pool_with_words

logger = logging.getLogger(__name__)

MODEL_FILE = "lexical.joblib"
CONFIG_FILE = "lexical.json"
# the fitted arrays (vocabulary, idf, regression), read by the served model without scikit-learn
# (``fusion.served.ServedLexical``); the analyzer settings are in CONFIG_FILE under "arrays"
ARRAYS_FILE = "lexical.npz"
FORMAT_VERSION = 1
C_GRID = (1.0, 3.0, 10.0, 30.0)


class LexicalBranch:
    """TF-IDF + logistic regression over listing text, and its pooling weights with the fusion head."""

    def __init__(self, vectorizer, classifier, num_classes: int, weights: dict[str, tuple[float, float]]):
        for mode in ("text", "fused"):
            pair = tuple(float(w) for w in weights[mode])
            if len(pair) != 2 or min(pair) < 0 or not np.isfinite(pair).all():
                raise ValueError(f"pooling weights for {mode} must be two non-negative numbers, got {pair}")
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.num_classes = num_classes
        self.weights = {mode: tuple(float(w) for w in weights[mode]) for mode in ("text", "fused")}

    @classmethod
    def fit(cls, texts: Sequence[str], y: np.ndarray, val_texts: Sequence[str], val_y: np.ndarray,
            val_head_log_probs: dict[str, np.ndarray], num_classes: int) -> LexicalBranch:
        """Fit on training listings; choose C and the pooling weights on validation listings.

        val_head_log_probs: the head's log-probabilities of the validation listings per mode (``text``:
        text only; ``fused``: text + photo, as served), (n_val, num_classes) each.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            raise ValueError("the lexical branch needs training listings of at least two categories")
        try:
            vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit(list(texts))
        except ValueError as error:  # no term in two listings: too few or too short texts
            raise ValueError(f"the lexical branch found no usable words in {len(texts)} listings ({error})") from None
        train_bag, val_bag = vectorizer.transform(list(texts)), vectorizer.transform(list(val_texts))
        best = None
        for c in C_GRID:
            classifier = LogisticRegression(C=c, max_iter=3000).fit(train_bag, y)
            accuracy = float(classifier.score(val_bag, val_y))
            if best is None or accuracy > best[0]:
                best = (accuracy, classifier)
        classifier = best[1]
        words = _full_log_proba(classifier, val_bag, num_classes)
        weights = {mode: pooling_weights(head, words, np.asarray(val_y)) for mode, head in val_head_log_probs.items()}
        logger.info("lexical branch: %d terms, C %.0f (val accuracy %.4f), pooling weights %s",
                    len(vectorizer.vocabulary_), classifier.C, best[0], weights)
        return cls(vectorizer, classifier, num_classes, weights)

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """float64 (n, num_classes) log-probabilities of the words alone."""
        return _full_log_proba(self.classifier, self.vectorizer.transform(list(texts)), self.num_classes)

    def pool(self, head_probs: np.ndarray, texts: Sequence[str], mode: str) -> np.ndarray:
        """The head's probabilities (n, C) pooled with the words of ``texts`` (n); ``mode`` ``text`` or ``fused``."""
        return pool_with_words(head_probs, self.log_proba(texts), self.weights[mode])

    def save(self, folder: Path) -> None:
        import joblib

        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"vectorizer": self.vectorizer, "classifier": self.classifier}, folder / MODEL_FILE)
        self.save_arrays(folder)

    @staticmethod
    def arrays_path(folder: Path) -> Path:
        return Path(folder) / ARRAYS_FILE

    def save_arrays(self, folder: Path) -> None:
        """The fitted vocabulary, idf and regression as numpy arrays (ARRAYS_FILE) and the analyzer settings, for
        ``fusion.served.ServedLexical``; ValueError for a vectorizer whose analysis it does not reproduce."""
        vectorizer, classifier = self.vectorizer, self.classifier
        unsupported = {name: getattr(vectorizer, name) for name in ("preprocessor", "tokenizer", "stop_words",
                                                                    "strip_accents")
                       if getattr(vectorizer, name, None) is not None}
        if vectorizer.analyzer != "word" or unsupported or not vectorizer.use_idf:
            raise ValueError(f"the served lexical branch reproduces a word analyzer with idf and no custom "
                             f"preprocessing, got analyzer={vectorizer.analyzer!r}, use_idf={vectorizer.use_idf}, "
                             f"{unsupported}")
        terms = np.empty(len(vectorizer.vocabulary_), dtype=object)
        for term, column in vectorizer.vocabulary_.items():
            terms[column] = term
        np.savez(self.arrays_path(folder), terms=terms.astype(str), idf=vectorizer.idf_,
                 coef=classifier.coef_, intercept=classifier.intercept_, classes=np.asarray(classifier.classes_))
        settings = {"lowercase": vectorizer.lowercase, "token_pattern": vectorizer.token_pattern,
                    "ngram_range": list(vectorizer.ngram_range), "sublinear_tf": vectorizer.sublinear_tf,
                    "binary": vectorizer.binary, "norm": vectorizer.norm}
        (folder / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "num_classes": self.num_classes,
                                                      "weights": self.weights, "arrays": settings}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> LexicalBranch:
        import joblib

        config = read_config(folder)
        parts = joblib.load(folder / MODEL_FILE)  # written by `save` above, inside the model bundle
        return cls(parts["vectorizer"], parts["classifier"], int(config["num_classes"]),
                   {mode: tuple(pair) for mode, pair in config["weights"].items()})


def read_config(folder: Path) -> dict:
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"lexical branch in {folder} has format version {config.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}; retrain with `marketsearch train`")
    return config


def _full_log_proba(classifier, bag, num_classes: int) -> np.ndarray:
    out = np.full((bag.shape[0], num_classes), np.log(1e-12))
    out[:, classifier.classes_] = classifier.predict_log_proba(bag)
    return out


def pooling_weights(head_log_probs: np.ndarray, words_log_probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Positive weights (head, words) minimising the cross-entropy of the pooled log-probabilities on ``y``."""
    import torch
    import torch.nn.functional as F

    experts = torch.as_tensor(np.stack([head_log_probs, words_log_probs]), dtype=torch.float64)
    target = torch.as_tensor(y, dtype=torch.long)
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy((F.softplus(raw).view(2, 1, 1) * experts).sum(0), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    head, words = (float(w) for w in F.softplus(raw.detach()))
    return head, words
