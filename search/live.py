"""The live follower: one per serving process, it keeps a `Searcher` within a poll of the catalogue's change log.

A background thread polls the log through a `catalog.change_log.LogCursor` (every ``poll_interval`` s: the
changes past the newest seq read, and the holes below it, since on PostgreSQL a lower seq can commit after a
higher one). For the listings
that changed it re-reads the catalogue (the database is the source of truth; the log says only *which*
listing changed, so replaying a change twice is harmless), encodes new or changed text and photos with
`encoders.embed.encode_listings` (the code `marketsearch embed` runs), and publishes a new `SearchSnapshot`:
the loaded index set untouched, plus the delta. Publishing is one reference assignment; searches never wait
for encoding.

When the delta passes ``compact_after`` listings (or has been waiting ``compact_age_s``), a second thread
compacts (`index.compaction.compact`: embed + incremental index update + atomic publish, one process at a
time). Every follower checks ``CURRENT`` on each poll: when a new set is published it loads it aside, keeps
only the delta past the new set's checkpoint (vectors of listings it already encoded are reused) and swaps.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from catalog.change_log import LogCursor
from catalog.store import Catalog
from encoders.embed import EmbeddingTable, content_hash, encode_listings, model_photo_dim
from index.bm25 import listing_text
from index.bm25_delta import BM25Delta
from index.compaction import compact
from index.index_set import load_index_set
from index.storage import current_version
from search.listing_table import build_listing_table, listing_columns
from search.pipeline import Searcher, load_serving_embeddings
from search.snapshot import Delta, MainPart, SearchSnapshot

logger = logging.getLogger(__name__)

ENCODER_LOAD_THREAD = "live-encoder-load"

DEFAULT_POLL_INTERVAL_S = 0.2
DEFAULT_COMPACT_AFTER = 500  # delta listings (changed, sold or deleted)
DEFAULT_COMPACT_AGE_S = 600.0
CHANGES_PER_POLL = 500


@dataclass
class _Entry:
    """One delta listing: its record, what its vectors were computed from, and the vectors."""

    listing: object
    digest: str
    text: np.ndarray
    image: np.ndarray
    has_image: bool
    vector: np.ndarray
    photo: np.ndarray | None  # float16 as stored, None when the main table has no photo vectors


class LiveFollower:
    """Follows the change log for ``searcher`` (loaded from ``workspace``) in a background thread."""

    def __init__(self, searcher: Searcher, workspace, *, poll_interval: float = DEFAULT_POLL_INTERVAL_S,
                 compact_after: int = DEFAULT_COMPACT_AFTER, compact_age_s: float = DEFAULT_COMPACT_AGE_S,
                 compaction: bool = True, encoder=None, load_encoder=None, preload_encoder: bool = False):
        self.searcher = searcher
        # the model that encodes catalogue listings: the fp32 weights `marketsearch embed` encodes with, not the
        # query runtime (the service may serve queries through int8 graphs; listing vectors must not depend on it).
        # ``load_encoder`` (no arguments -> the model) defers loading it to the first listing to encode, in this
        # follower's threads: a process that serves no write never loads a second copy of the towers, and
        # its start does not wait for one. ``preload_encoder`` loads it in a background thread from ``start``
        # instead, so the first write does not wait either. Without either, the searcher's own model encodes.
        self._encoder = encoder
        self._load_encoder = load_encoder
        self.preload_encoder = preload_encoder
        self._encoder_lock = threading.Lock()
        self.workspace = workspace
        self.poll_interval = poll_interval
        self.compact_after = compact_after
        self.compact_age_s = compact_age_s
        self.compaction = compaction
        self.catalog = Catalog(workspace.db_url, root=workspace.root)
        self.cursor = LogCursor(searcher.snapshot.applied_seq)  # the loaded set's checkpoint: a settled head
        self._entries: dict[str, _Entry] = {}  # active delta listings by id
        self._dead: set[str] = set()  # every listing changed since the checkpoint (main rows masked)
        self._delta_since: float | None = None  # monotonic time of the oldest change in the delta
        self._stop = threading.Event()
        self._compact_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_compaction: dict | None = None
        self.last_error: str | None = None

    @property
    def encoder(self):
        with self._encoder_lock:  # the follower and the compaction thread may both need it first
            if self._encoder is None:
                if self._load_encoder is None:
                    self._encoder = self.searcher.model
                else:
                    started = time.monotonic()
                    self._encoder = self._load_encoder()
                    logger.info("live follower: catalogue encoder loaded in %.1f s", time.monotonic() - started)
            return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> LiveFollower:
        self._threads = [threading.Thread(target=self._follow, name="live-follower", daemon=True)]
        if self.compaction:
            self._threads.append(threading.Thread(target=self._compact_loop, name="live-compaction", daemon=True))
        if self.preload_encoder and self._load_encoder is not None:
            self._threads.append(threading.Thread(target=self._preload, name=ENCODER_LOAD_THREAD, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._compact_now.set()
        for thread in self._threads:
            # the encoder preload (a daemon) may be importing torch, which nothing interrupts: not waited for
            if thread.name != ENCODER_LOAD_THREAD:
                thread.join(timeout)
        self.catalog.close()

    def _preload(self) -> None:
        try:
            self.encoder  # noqa: B018 -- the property loads it
        except Exception:  # noqa: BLE001 -- the first listing to encode tries again and reports it
            logger.exception("live follower: preloading the catalogue encoder failed")

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 -- keep following; /health shows the error
                self.last_error = f"{type(error).__name__}: {error}"
                logger.exception("live follower: poll failed (the current snapshot keeps serving)")
            self._stop.wait(self.poll_interval)

    # -- one step ---------------------------------------------------------------------------------------

    def poll(self) -> int:
        """Load a newly published index set if there is one, then apply the log past ``applied_seq``;
        return how many change-log rows were applied. Safe to call directly (tests step with it)."""
        if self._published_version() not in (None, self.searcher.index_version):
            self.reload()
        snapshot = self.searcher.snapshot
        head, changes = self.cursor.fetch(self.catalog, CHANGES_PER_POLL)
        if changes:
            self._apply([listing_id for _, listing_id, _ in changes])
        self.cursor.advance(head, changes)
        if changes:
            self._publish(snapshot.main, self.cursor.high)
        self._maybe_compact()
        return len(changes)

    def catch_up(self, timeout: float = 60.0) -> int:
        """Poll until every change up to the log head (as of the call) is applied; return the applied seq."""
        head = self.catalog.last_change()
        deadline = time.monotonic() + timeout
        while self.cursor.settled < head and time.monotonic() < deadline:
            self.poll()
        return self.searcher.applied_seq

    def _apply(self, listing_ids: list[str]) -> None:
        ids = list(dict.fromkeys(listing_ids))
        found = {listing.id: listing for listing in self.catalog.get_listings(ids)}
        to_encode = []
        for listing_id in ids:
            self._dead.add(listing_id)
            listing = found.get(listing_id)
            if listing is None or listing.status != "active":  # deleted or sold: a tombstone, no delta row
                self._entries.pop(listing_id, None)
                continue
            digest = content_hash(listing, self.catalog)
            entry = self._entries.get(listing_id)
            if entry is not None and entry.digest == digest:  # price, place, status...: same vectors
                self._entries[listing_id] = _Entry(listing, digest, entry.text, entry.image, entry.has_image,
                                                   entry.vector, entry.photo)
            else:
                to_encode.append((listing, digest))
        if to_encode:
            model = self.encoder
            encoded = encode_listings(model, self.catalog, [listing for listing, _ in to_encode])
            photos = encoded.photo_rows(model_photo_dim(model))
            keep_photo = self.searcher.snapshot.has_photo_vectors()
            for i, (listing, digest) in enumerate(to_encode):
                self._entries[listing.id] = _Entry(
                    listing, digest, encoded.text[i], encoded.image[i], bool(encoded.has_image[i]),
                    encoded.listing[i], photos[i] if keep_photo else None)
        if self._delta_since is None:
            self._delta_since = time.monotonic()

    def _publish(self, main: MainPart, applied_seq: int) -> None:
        entries = sorted(self._entries.values(), key=lambda entry: entry.listing.id)
        listings = [entry.listing for entry in entries]
        table = listing_columns(listings, self.searcher.model.labels, main.median_price)
        dim = main.vector_index.dimension

        def stack(values, width, dtype):
            return np.stack(values).astype(dtype) if values else np.zeros((0, width), dtype)

        photo = None
        if main.photo_dim is not None:
            photo = stack([entry.photo for entry in entries], main.photo_dim, np.float16)
        embeddings = EmbeddingTable(
            ids=table.ids,
            text=stack([entry.text for entry in entries], dim, np.float32),
            image=stack([entry.image for entry in entries], dim, np.float32),
            has_image=np.array([entry.has_image for entry in entries], dtype=bool),
            listing=stack([entry.vector for entry in entries], dim, np.float32),
            photo=photo,
            has_photo=None if photo is None else np.array([entry.photo is not None and entry.has_image
                                                           for entry in entries], dtype=bool),
        )
        bm25 = BM25Delta(main.bm25, table.ids, [listing_text(x.title, x.description) for x in listings])
        delta = Delta(table, embeddings, bm25, frozenset(self._dead))
        self.searcher.snapshot = SearchSnapshot(main, delta, applied_seq)  # the swap: one reference assignment

    # -- index sets -------------------------------------------------------------------------------------

    def _published_version(self) -> str | None:
        try:
            return current_version(self.workspace.index_dir)
        except Exception:  # noqa: BLE001 -- no set yet, or a publish in progress: keep the loaded one
            return None

    def reload(self) -> None:
        """Load the published index set aside, keep only the changes past its checkpoint, swap."""
        model = self.searcher.model
        index_set = load_index_set(self.workspace.index_dir, expected_fingerprint=model.fingerprint, mmap=True)
        listings = build_listing_table(self.catalog, model.labels)
        embeddings = load_serving_embeddings(self.catalog, model, index_set)
        main = MainPart(listings, embeddings, index_set.vector, index_set.bm25, index_set.version,
                        index_set.checkpoint, index_set.photo)
        applied = self.cursor.high
        previous = self._entries
        self._entries, self._dead, self._delta_since = {}, set(), None
        replay, replayed = [], []
        seq = index_set.checkpoint
        while seq < applied:  # what this process had applied past the new checkpoint (and holes filled since)
            rows = self.catalog.changes_since(seq, limit=CHANGES_PER_POLL)
            rows = [row for row in rows if row[0] <= applied]
            if not rows:
                break
            replay += [listing_id for _, listing_id, _ in rows]
            replayed += [row[0] for row in rows]
            seq = rows[-1][0]
        self._entries = {i: previous[i] for i in replay if i in previous}  # digests decide what is re-encoded
        self._apply(replay)
        self.cursor.rebase(index_set.checkpoint, replayed)
        self._publish(main, max(applied, index_set.checkpoint))
        if not replay:
            self._delta_since = None
        logger.info("live follower: serving index set %s (checkpoint %d), %d listings in the delta",
                    index_set.version, index_set.checkpoint, len(self._entries))

    # -- compaction -------------------------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        if not self.compaction or not self._dead:
            return
        old = self._delta_since is not None and time.monotonic() - self._delta_since >= self.compact_age_s
        if len(self._dead) >= self.compact_after or old:
            self._compact_now.set()

    def _compact_loop(self) -> None:
        while not self._stop.is_set():
            self._compact_now.wait()
            if self._stop.is_set():
                return
            started = time.time()
            try:
                report = compact(self.workspace, self.encoder)
                if report is not None:
                    self.last_compaction = {"at": started, "seconds": round(time.time() - started, 2),
                                            "index_set": report.index_set, "checkpoint": report.checkpoint,
                                            "published": report.published}
            except Exception as error:  # noqa: BLE001 -- the previous set keeps serving
                self.last_error = f"compaction failed: {type(error).__name__}: {error}"
                logger.exception("live follower: compaction failed (the previous index set keeps serving)")
            # another process may hold the lock, or the new set is not loaded yet: do not retry at once
            self._compact_now.clear()
            self._stop.wait(max(self.poll_interval * 10, 2.0))

    def status(self) -> dict:
        snapshot = self.searcher.snapshot
        head = max(self.catalog.last_change(), snapshot.applied_seq)
        in_flight = self.cursor.last_head.in_flight if self.cursor.last_head else frozenset()
        return {
            "pid": os.getpid(),  # which worker of `serve --workers N` answered
            "applied_seq": snapshot.applied_seq,
            "settled_seq": self.cursor.settled,
            "in_flight_writes": len(in_flight),
            "head_seq": head,
            "lag": head - snapshot.applied_seq,
            "delta_listings": len(snapshot.delta),
            "tombstones": len(snapshot.delta.dead),
            "index_set": snapshot.index_version,
            "checkpoint": snapshot.main.checkpoint,
            "last_compaction": self.last_compaction,
            "error": self.last_error,
            "encoder_loaded": self.encoder_loaded,
        }
