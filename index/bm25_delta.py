"""`BM25Delta`: BM25 over the few listings created or changed since the published BM25 index was built.

bm25s has no incremental updates, and a small index of its own would score with its own statistics (a
word rare in the catalogue may be common among ten new listings), so the delta scores its documents with
the published index's statistics instead: the same analyser, the same k1 and b, each term's document
frequency and the mean document length of the main index. A delta document identical to one in the main
index gets exactly its score, so the two rankings merge by score. A term the main index has never seen
gets the document frequency it has in the delta (a new brand name is findable at once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from index.bm25 import MAX_QUERY_CHARS, BM25Index


class BM25Delta:
    """BM25 scores of ``texts[i]`` (listing ``listing_ids[i]``) with ``main``'s statistics. Immutable."""

    def __init__(self, main: BM25Index, listing_ids: Sequence[str], texts: Sequence[str]):
        self.main = main
        self.listing_ids = list(listing_ids)
        self._terms = [Counter(main.analyse(text)) for text in texts]
        self._lengths = np.array([sum(terms.values()) for terms in self._terms], dtype=np.float64)
        stored = main.retriever.scores
        self._n_docs = int(stored["num_docs"])
        self._indptr = stored["indptr"]
        self._k1 = float(main.info.get("k1", main.retriever.k1))
        self._b = float(main.info.get("b", main.retriever.b))
        # a set built before the mean length was recorded: the delta's own mean (documented approximation)
        recorded = main.info.get("avg_doc_length")
        self._avg_length = float(recorded) if recorded else float(self._lengths.mean() or 1.0) if len(texts) else 1.0
        self._delta_df = Counter(term for terms in self._terms for term in terms)

    def __len__(self) -> int:
        return len(self.listing_ids)

    def _idf(self, term: str) -> float:
        term_id = self.main.retriever.vocab_dict.get(term)
        if term_id is not None:
            df = float(self._indptr[term_id + 1] - self._indptr[term_id])
        else:
            df = float(self._delta_df.get(term, 0))
        return float(np.log1p((self._n_docs - df + 0.5) / (df + 0.5)))

    def _contribution(self, term: str) -> np.ndarray:
        """Each delta document's BM25 contribution for ``term`` (float64 (n,), 0 without the term)."""
        tf = np.array([terms.get(term, 0) for terms in self._terms], dtype=np.float64)
        norm = self._k1 * (1 - self._b + self._b * self._lengths / self._avg_length)
        return self._idf(term) * tf / (tf + norm)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every delta listing for ``query`` (float32 (n,)); repeated query terms count again,
        as in `BM25Index.scores`."""
        total = np.zeros(len(self), dtype=np.float64)
        if not len(self):
            return total.astype(np.float32)
        for term, repeats in Counter(self.main.analyse(query[:MAX_QUERY_CHARS])).items():
            if term in self._delta_df:
                total += repeats * self._contribution(term)
        return total.astype(np.float32)

    def search(self, query: str, k: int, *, allowed_mask: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Top-k delta listings matching a query term, best first (ties by position), like `BM25Index.search`."""
        scores = self.scores(query)
        if allowed_mask is not None:
            scores = np.where(allowed_mask, scores, 0.0).astype(np.float32)
        matching = np.flatnonzero(scores > 0)
        order = matching[np.lexsort((matching, -scores[matching]))][:k]
        return scores[order], [self.listing_ids[i] for i in order]

    def term_scores(self, query: str, positions: np.ndarray) -> np.ndarray:
        """Per delta listing at ``positions``, the contribution of each query term the main index knows, in
        the column order of ``main.term_scores`` (float32 (len(positions), t))."""
        analysed = dict.fromkeys(self.main.analyse(query[:MAX_QUERY_CHARS]))
        known = [term for term in analysed if term in self.main.retriever.vocab_dict]
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros((len(positions), len(known)), dtype=np.float32)
        for j, term in enumerate(known):
            out[:, j] = self._contribution(term)[positions]
        return out
