"""`BM25Index`: lexical search over listing title + description with `bm25s`.

Tokenisation (bm25s's tokenizer): lower-cased word tokens including single characters and digits (so
model numbers such as "XR 5" or "iPhone 7" keep every part), English stopwords removed, Snowball
English stemming (PyStemmer). The index is rebuilt from the catalogue in one pass; bm25s has no
incremental updates, and building is fast (about 1 s per 100k short documents).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import Stemmer

from index.storage import REBUILD_HINT, IndexLoadError, atomic_version, open_version, read_manifest, write_manifest


def _import_bm25s():
    """``import bm25s``, without numba.

    bm25s imports numba at import time whenever it is installed (ranx, for evaluation, brings it): 0.7 s of the
    service's start. Only its opt-in numba backend and ``compile()`` use it; this index keeps the default numpy
    backend and scores with ``get_scores``. A ``None`` entry in ``sys.modules`` makes bm25s's own ``import numba``
    fail, so it imports as on a machine without numba; a numba already imported is left alone.
    """
    if "numba" in sys.modules or "bm25s" in sys.modules:
        import bm25s
        return bm25s
    sys.modules["numba"] = None
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s


bm25s = _import_bm25s()

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
IDS_FILE = "listing_ids.json"
# Keep single-character and numeric tokens ("7" in "iPhone 7"); bm25s's default drops 1-char tokens.
TOKEN_PATTERN = r"(?u)\b\w+\b"
STOPWORDS = "en"
STEMMER_LANGUAGE = "english"
MAX_QUERY_CHARS = 1000


def listing_text(title: str | None, description: str | None) -> str:
    """The text BM25 indexes for a listing (the title counts once, like the description)."""
    return " ".join(part for part in (title, description) if part)


class BM25Index:
    """BM25 (Lucene variant, k1=1.5, b=0.75) over one text per listing."""

    def __init__(self, retriever: bm25s.BM25, listing_ids: Sequence[str], info: dict | None = None):
        self.retriever = retriever
        self.listing_ids = list(listing_ids)
        self._position_of = {listing_id: position for position, listing_id in enumerate(self.listing_ids)}
        self._stemmer = Stemmer.Stemmer(STEMMER_LANGUAGE)
        self.info = dict(info or {})
        self._postings_sorted: bool | None = None  # listing positions ascending within each term (checked once)

    @classmethod
    def build(cls, listing_ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> BM25Index:
        """Index ``texts[i]`` under ``listing_ids[i]`` (use `listing_text` for title + description)."""
        if isinstance(listing_ids, str) or isinstance(texts, str):
            raise ValueError("listing_ids and texts must be sequences, not single strings")
        listing_ids, texts = list(listing_ids), list(texts)
        if len(listing_ids) != len(texts):
            raise ValueError(f"got {len(listing_ids)} listing ids but {len(texts)} texts; they must match one to one")
        if len(set(listing_ids)) != len(listing_ids):
            raise ValueError("duplicate listing ids; each listing must appear once")
        bad = [i for i, text in zip(listing_ids, texts) if not isinstance(text, str)]
        if bad:
            raise ValueError(f"texts must be strings; listings {bad[:3]!r} have other values")
        if not listing_ids:
            raise ValueError("cannot build a BM25 index over 0 listings; ingest the catalogue first")
        tokens = bm25s.tokenize(
            texts,
            stopwords=STOPWORDS,
            stemmer=Stemmer.Stemmer(STEMMER_LANGUAGE),
            token_pattern=TOKEN_PATTERN,
            show_progress=False,
        )
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=len(texts) > 50_000)
        logger.info("indexed %d listings, %d distinct terms", len(texts), len(tokens.vocab))
        # bm25s keeps no document lengths: the mean is recorded so that a live delta (index.bm25_delta) scores
        # new listings exactly as this index scores its own
        avg_doc_length = float(np.mean([len(ids) for ids in tokens.ids])) if len(tokens.ids) else 0.0
        info = {"k1": k1, "b": b, "vocabulary": len(tokens.vocab), "avg_doc_length": avg_doc_length}
        return cls(retriever, listing_ids, info=info)

    def analyse(self, query: str) -> list[str]:
        """The query's terms as the index sees them: lower-cased, stopwords removed, stemmed (repeats kept)."""
        return bm25s.tokenize(
            [query],
            stopwords=STOPWORDS,
            stemmer=self._stemmer,
            token_pattern=TOKEN_PATTERN,
            return_ids=False,
            show_progress=False,
        )[0]

    def query_terms(self, query: str) -> list[str]:
        """The query's stemmed terms that occur in the index (unknown terms cannot score)."""
        vocabulary = self.retriever.vocab_dict
        return [token for token in self.analyse(query) if token in vocabulary]

    def term_scores(self, query: str, positions: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """How the listings at ``positions`` (see ``positions_of``) match each term of ``query``.

        Returns ``(n_terms, idf, scores)``: the number of distinct analysed query terms (terms the index
        has never seen included), the IDF of the distinct terms the index knows (float32 (t,), Lucene's
        ``log(1 + (N - df + 0.5) / (df + 0.5))``) and each such term's BM25 contribution to each listing
        (float32 (len(positions), t); 0 where the listing's text lacks the term, NaN rows for position
        -1). A row's sum is the listing's BM25 score for ``query``, whether or not it made the top k.
        """
        if not isinstance(query, str):
            raise ValueError(f"query must be a string; got {type(query).__name__}")
        positions = np.asarray(positions, dtype=np.int64).ravel()
        analysed = list(dict.fromkeys(self.analyse(query[:MAX_QUERY_CHARS])))
        vocabulary = self.retriever.vocab_dict
        term_ids = np.array([vocabulary[t] for t in analysed if t in vocabulary], dtype=np.int64)
        stored = self.retriever.scores
        indptr, indices, data = stored["indptr"], stored["indices"], stored["data"]
        n_docs = int(stored["num_docs"])
        starts, ends = indptr[term_ids].astype(np.int64), indptr[term_ids + 1].astype(np.int64)
        df = (ends - starts).astype(np.float64)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        scores = np.zeros((len(positions), len(term_ids)), dtype=np.float32)
        known = positions >= 0
        wanted = positions[known]
        if self._postings_sorted is None:
            self._postings_sorted = _postings_are_sorted(indices, indptr)
        for j, (start, end) in enumerate(zip(starts, ends)):
            docs = indices[start:end]
            if self._postings_sorted:
                at = np.minimum(np.searchsorted(docs, wanted), max(len(docs) - 1, 0))
                found = docs[at] == wanted if len(docs) else np.zeros(len(wanted), bool)
                column = np.where(found, data[start:end][at] if len(docs) else 0.0, 0.0)
            else:  # a general CSC matrix: scatter the term's postings once
                dense = np.zeros(n_docs, dtype=np.float32)
                dense[docs] = data[start:end]
                column = dense[wanted]
            scores[known, j] = column
        scores[~known] = np.nan
        return len(analysed), idf, scores

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every listing for ``query`` (float32, in ``listing_ids`` order; zeros if no term matches)."""
        if not isinstance(query, str):
            raise ValueError(f"query must be a string; got {type(query).__name__}")
        terms = self.query_terms(query[:MAX_QUERY_CHARS])
        if not terms:
            return np.zeros(len(self), dtype=np.float32)
        return np.asarray(self.retriever.get_scores(terms), dtype=np.float32)

    def search(
        self,
        query: str,
        k: int,
        allowed_ids: Collection[str] | None = None,
        *,
        allowed_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Top-k listings matching at least one query term: ``(scores float32 (k',), ids)``, best first.

        Listings with score 0 (no query term) are not returned, so an empty, stopword-only or
        unknown-term query gives empty results. ``allowed_ids`` (or ``allowed_mask``, a bool array in
        ``listing_ids`` order, see ``positions_of``) is applied to the scores of every listing before
        the top-k, so the filter is exact: never a listing outside it, and k results whenever k
        allowed listings match.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if allowed_ids is not None and allowed_mask is not None:
            raise ValueError("pass allowed_ids or allowed_mask, not both")
        scores = self.scores(query)
        if allowed_ids is not None:
            if isinstance(allowed_ids, str):
                raise ValueError("allowed_ids must be a collection of listing ids, not a single string")
            positions = self.positions_of(allowed_ids)
            allowed_mask = np.zeros(len(self), dtype=bool)
            allowed_mask[positions[positions >= 0]] = True
        if allowed_mask is not None:
            if allowed_mask.shape != (len(self),):
                raise ValueError(f"allowed_mask must have shape ({len(self)},); got {allowed_mask.shape}")
            scores = np.where(allowed_mask, scores, 0.0).astype(np.float32)
        matching = np.flatnonzero(scores > 0)
        if len(matching) > k:
            matching = matching[np.argpartition(-scores[matching], k - 1)[:k]]
        # Sort by score, ties by position (stable, deterministic).
        order = matching[np.lexsort((matching, -scores[matching]))]
        return scores[order], [self.listing_ids[i] for i in order]

    def positions_of(self, listing_ids: Iterable[str]) -> np.ndarray:
        """Position of each listing id in ``listing_ids`` (int64), -1 for a listing not in the index."""
        lookup = self._position_of
        return np.fromiter((lookup.get(i, -1) for i in listing_ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.listing_ids)

    def __contains__(self, listing_id: str) -> bool:
        return listing_id in self._position_of

    @property
    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "bm25_index",
            "count": len(self),
            "bm25s_version": bm25s.__version__,
            "token_pattern": TOKEN_PATTERN,
            "stopwords": STOPWORDS,
            "stemmer": STEMMER_LANGUAGE,
            **self.info,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the bm25s index and the listing ids as a new version of ``directory``, atomically."""
        with atomic_version(directory, self.manifest) as folder:
            self._write_files(folder)
        return Path(directory)

    def write_to(self, folder: str | os.PathLike) -> Path:
        """Write the bm25s index, the listing ids and manifest.json into the new folder ``folder``, for a
        caller that publishes it as part of something larger (the workspace's index set)."""
        folder = Path(folder)
        folder.mkdir()
        self._write_files(folder)
        write_manifest(folder, self.manifest)
        return folder

    def _write_files(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)
        with open(folder / IDS_FILE, "w", encoding="utf-8") as handle:
            json.dump(self.listing_ids, handle)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BM25Index:
        folder, manifest = open_version(directory, "BM25 index")
        return cls._read(folder, manifest)

    @classmethod
    def read_from(cls, folder: str | os.PathLike, verify: bool = True) -> BM25Index:
        """Load the folder written by `write_to` (``verify=False`` skips the checksums a caller has checked)."""
        folder = Path(folder)
        return cls._read(folder, read_manifest(folder, "BM25 index", verify=verify))

    @classmethod
    def _read(cls, folder: Path, manifest: dict) -> BM25Index:
        if manifest.get("kind") != "bm25_index" or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexLoadError(
                f"{folder} holds {manifest.get('kind')!r} format {manifest.get('format_version')!r}, expected "
                f"'bm25_index' format {FORMAT_VERSION}; {REBUILD_HINT}"
            )
        retriever = bm25s.BM25.load(str(folder), show_progress=False)
        listing_ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        if len(listing_ids) != retriever.scores["num_docs"]:
            raise IndexLoadError(
                f"{folder} lists {len(listing_ids)} listing ids for {retriever.scores['num_docs']} documents; "
                f"{REBUILD_HINT}"
            )
        info = {key: manifest[key] for key in ("k1", "b", "vocabulary", "avg_doc_length") if key in manifest}
        return cls(retriever, listing_ids, info=info)


def _postings_are_sorted(indices: np.ndarray, indptr: np.ndarray) -> bool:
    """True when the document positions of every term (a CSC column) are ascending."""
    if len(indices) < 2:
        return True
    drops = np.flatnonzero(np.diff(indices.astype(np.int64)) <= 0) + 1
    return bool(np.isin(drops, indptr).all())
