"""`SearchSnapshot`: everything one search reads, immutable, swapped as a whole by one reference assignment.

A snapshot is the published index set as loaded (vector index, BM25, photo index, the listing table and
embeddings of its listings) plus a small *delta*: the listings created or changed since the set's checkpoint, with their
vectors (exact search), a `BM25Delta` scored with the main index's statistics and their listing-table rows,
and tombstones: main rows whose listing was changed (its delta row replaces it), sold or deleted, masked out
of both main indexes. `Searcher` takes its current snapshot once per call, so a search never sees half an
update; the live follower (search/live.py) builds the next one aside and swaps it in.

Row layout of ``listings``: the main rows first (as loaded, dead ones kept but never candidates), then one
row per delta listing. ``embedding_row`` maps a row to the stacked embeddings: main table rows, then delta
rows after them.

Photo vectors (the photo retriever's and ``photo_sim``'s): the main rows' come from the embedding table when it
holds them (evaluation, tests), else from the photo index, which stores the same float16 values exactly (the
service loads no second copy: 1,792 values a listing); the delta's from the delta's embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from encoders.embed import EmbeddingTable
from index.bm25 import BM25Index
from index.bm25_delta import BM25Delta
from index.vector_index import VectorIndex
from ranking.types import ListingTable
from search.filters import FilterMasks, SearchFilters
from search.listing_table import listing_columns


@dataclass(frozen=True, eq=False)
class Delta:
    """Listings created or changed since the index set's checkpoint (active ones), and the dead main ids."""

    listings: ListingTable  # one row per delta listing
    embeddings: EmbeddingTable  # same rows
    bm25: BM25Delta  # same rows
    dead: frozenset[str] = frozenset()  # main listings masked out: changed (replaced by a delta row), sold, deleted

    @classmethod
    def empty(cls, main_bm25: BM25Index, dim: int, photo_dim: int | None) -> Delta:
        table = listing_columns([], None)
        photo = None if photo_dim is None else np.zeros((0, photo_dim), np.float16)
        empty = np.zeros((0, dim), np.float32)
        embeddings = EmbeddingTable([], empty, empty, np.zeros(0, bool), empty, photo=photo,
                                    has_photo=None if photo is None else np.zeros(0, bool))
        return cls(table, embeddings, BM25Delta(main_bm25, [], []))

    def __len__(self) -> int:
        return len(self.listings)


@dataclass(frozen=True, eq=False)
class MainPart:
    """The loaded index set and its listing table: built once per index set, shared by its snapshots."""

    listings: ListingTable
    embeddings: EmbeddingTable
    vector_index: VectorIndex
    bm25: BM25Index
    index_version: str | None
    checkpoint: int
    photo_index: VectorIndex | None = None  # the image queries' photo retriever; None in a set without one
    filters: FilterMasks = field(init=False)
    faiss_id: np.ndarray = field(init=False)  # per main row, -1 where not indexed
    photo_faiss_id: np.ndarray = field(init=False)  # per main row, -1 where not in the photo index
    bm25_position: np.ndarray = field(init=False)
    embedding_row: np.ndarray = field(init=False)  # per main row, -1 without an embedding
    median_price: dict = field(init=False)  # top-category index -> median price (for delta rows)

    @property
    def photo_dim(self) -> int | None:
        """The photo vectors' dimension (None without photo vectors: a catalogue embedded before they existed)."""
        if self.embeddings.photo is not None:
            return int(self.embeddings.photo.shape[1])
        return None if self.photo_index is None else self.photo_index.dimension

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "filters", FilterMasks(self.listings))
        set_(self, "faiss_id", self.vector_index.faiss_ids_of(self.listings.ids))
        set_(self, "photo_faiss_id", self.photo_index.faiss_ids_of(self.listings.ids) if self.photo_index is not None
             else np.full(len(self.listings), -1, dtype=np.int64))
        set_(self, "bm25_position", self.bm25.positions_of(self.listings.ids))
        rows = self.embeddings.row_of
        set_(self, "embedding_row", np.array([rows.get(i, -1) for i in self.listings.ids], dtype=np.int64))
        medians = {}
        for top, median in zip(self.listings.top_category_index.tolist(), self.listings.category_median_price.tolist()):
            medians.setdefault(top, median)
        set_(self, "median_price", medians)


class SearchSnapshot:
    """One consistent state to search: ``main`` plus ``delta``, as of change-log seq ``applied_seq``."""

    def __init__(self, main: MainPart, delta: Delta, applied_seq: int):
        self.main = main
        self.delta = delta
        self.applied_seq = applied_seq
        n_main, n_delta = len(main.listings), len(delta)
        dead_rows = [main.listings.row_of[i] for i in delta.dead if i in main.listings.row_of]
        live = np.ones(n_main + n_delta, dtype=bool)
        live[dead_rows] = False
        self.live = live
        self.listings = _concat_tables(main.listings, delta.listings) if n_delta else main.listings

        def live_positions(main_positions: np.ndarray) -> np.ndarray:
            """Per row, its position in a main index: -1 for a delta row and for a dead main row."""
            positions = np.concatenate([main_positions, np.full(n_delta, -1, dtype=np.int64)])
            positions[~live] = -1
            return positions

        def dead_entries(index_size: int, positions: np.ndarray) -> int:
            """Main-index entries that must never come back: listings of dead rows, and listings the table
            lacks (deleted from the catalogue before the set was loaded)."""
            return index_size - int((positions[:n_main] >= 0).sum())

        self.faiss_id = faiss_id = live_positions(main.faiss_id)
        self.bm25_position = bm25_position = live_positions(main.bm25_position)
        self.photo_faiss_id = photo_faiss_id = live_positions(main.photo_faiss_id)
        self.delta_position = np.concatenate([np.full(n_main, -1, dtype=np.int64), np.arange(n_delta)])
        self.embedding_row = np.concatenate([main.embedding_row, len(main.embeddings) + np.arange(n_delta)])
        self.dead_in_vector = dead_entries(len(main.vector_index), faiss_id)
        self.dead_in_photo = 0 if main.photo_index is None else dead_entries(len(main.photo_index), photo_faiss_id)
        self.bm25_live_mask = None
        if dead_entries(len(main.bm25), bm25_position):
            mask = np.zeros(len(main.bm25), dtype=bool)
            mask[bm25_position[bm25_position >= 0]] = True
            self.bm25_live_mask = mask
        self._main_rows = main.listings.row_of

    # -- what the pipeline reads -----------------------------------------------------------------------

    @property
    def index_version(self) -> str | None:
        return self.main.index_version

    def filter_mask(self, filters: SearchFilters) -> np.ndarray:
        """bool (n,) over ``listings``: live rows satisfying ``filters``."""
        delta_mask = self.delta_filters().mask(filters) if len(self.delta) else np.zeros(0, bool)
        return np.concatenate([self.main.filters.mask(filters), delta_mask]) & self.live

    def delta_filters(self) -> FilterMasks:
        filters = self.__dict__.get("_delta_filters")
        if filters is None:
            filters = self.__dict__["_delta_filters"] = FilterMasks(self.delta.listings)
        return filters

    def is_live_main(self, listing_id: str) -> bool:
        row = self._main_rows.get(listing_id)
        return row is not None and bool(self.live[row])

    def gather(self, column: str, emb_rows: np.ndarray) -> np.ndarray:
        """Rows of an embedding column (``text``, ``image``, ``listing``, ``has_image``, ``photo``,
        ``has_photo``) across the main table and the delta; ``emb_rows`` must be >= 0."""
        emb_rows = np.asarray(emb_rows, dtype=np.int64)
        main = getattr(self.main.embeddings, column)
        if not len(self.delta):
            return main[emb_rows]
        delta = getattr(self.delta.embeddings, column)
        n_main = len(self.main.embeddings)
        in_delta = emb_rows >= n_main
        out = np.zeros((len(emb_rows), *main.shape[1:]), dtype=main.dtype)
        out[~in_delta] = main[emb_rows[~in_delta]]
        if in_delta.any():
            out[in_delta] = delta[emb_rows[in_delta] - n_main]
        return out

    def has_photo_vectors(self) -> bool:
        return self.main.photo_dim is not None

    def photo_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For listing ``rows``: bool (k,) which have a photo vector, and those vectors (float32 (present, p))."""
        rows = np.asarray(rows, dtype=np.int64)
        dim = self.main.photo_dim
        if self.main.embeddings.photo is not None:  # the table holds them, the main rows' and the delta's
            emb_rows = self.embedding_row[rows]
            present = emb_rows >= 0
            present[present] = self.gather("has_photo", emb_rows[present])
            return present, self.gather("photo", emb_rows[present]).astype(np.float32)
        present = np.zeros(len(rows), dtype=bool)
        if dim is None or not len(rows):
            return present, np.zeros((0, dim or 0), np.float32)
        vectors = np.zeros((len(rows), dim), np.float32)
        position = self.delta_position[rows]
        in_delta = np.flatnonzero(position >= 0)
        if len(in_delta):
            in_delta = in_delta[self.delta.embeddings.has_photo[position[in_delta]]]
            present[in_delta] = True
            vectors[in_delta] = self.delta.embeddings.photo[position[in_delta]].astype(np.float32)
        main = np.flatnonzero(position < 0)
        faiss_ids = self.main.photo_faiss_id[rows[main]]  # the main table's, dead rows included
        main, faiss_ids = main[faiss_ids >= 0], faiss_ids[faiss_ids >= 0]
        present[main] = True
        vectors[main] = self.main.photo_index.vectors_at(faiss_ids)
        return present, vectors[present]


def _concat_tables(a: ListingTable, b: ListingTable) -> ListingTable:
    row_of = dict(a.row_of)
    row_of.update((listing_id, len(a) + row) for row, listing_id in enumerate(b.ids))
    return ListingTable(
        ids=a.ids + b.ids,
        titles=a.titles + b.titles,
        categories=a.categories + b.categories,
        top_category_index=np.concatenate([a.top_category_index, b.top_category_index]),
        price=np.concatenate([a.price, b.price]),
        category_median_price=np.concatenate([a.category_median_price, b.category_median_price]),
        towns=a.towns + b.towns,
        counties=a.counties + b.counties,
        photo_count=np.concatenate([a.photo_count, b.photo_count]),
        description_length=np.concatenate([a.description_length, b.description_length]),
        created_days=np.concatenate([a.created_days, b.created_days]),
        row_of=row_of,
        cards=a.cards + b.cards if a.cards is not None and b.cards is not None else None,
    )
