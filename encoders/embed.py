"""Catalogue embeddings: encode every listing once per model, store the vectors in the catalogue database.

Per listing: the text vector (title + description), the image vector (mean of the listing's photo
embeddings, re-normalised) and the listing vector the index holds (normalised sum of the two, or
whichever exists). Rows are keyed by (listing id, model fingerprint) and carry a content hash, so a
re-run encodes only new or changed listings and an interrupted run resumes where it stopped (each batch
is committed in its own transaction).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    select,
)
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

metadata = MetaData()
listing_embeddings = Table(
    "listing_embeddings",
    metadata,
    Column("listing_id", String, primary_key=True),
    Column("model_fingerprint", String(64), primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("has_image", Boolean, nullable=False),
    Column("n_images", Integer, nullable=False),
    Column("text", LargeBinary, nullable=False),
    Column("image", LargeBinary, nullable=False),
    Column("listing", LargeBinary, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)


@dataclass
class EmbeddingTable:
    """Embeddings of the catalogue for one model, rows ordered by listing id."""

    ids: list[str]
    text: np.ndarray  # float32 (n, d), L2-normalised
    image: np.ndarray  # float32 (n, d), L2-normalised, zeros where the listing has no usable photo
    has_image: np.ndarray  # bool (n,)
    listing: np.ndarray  # float32 (n, d), normalised combination: what the vector index holds
    row_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of = {listing_id: row for row, listing_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.listing.shape[1])


@dataclass
class EmbedStats:
    listings: int = 0  # in the catalogue
    encoded: int = 0  # new or changed, encoded in this run
    up_to_date: int = 0  # skipped: same content, same model
    removed: int = 0  # rows of listings no longer in the catalogue
    images_encoded: int = 0
    image_errors: int = 0  # unreadable / missing photo files (logged, listing keeps its other photos)
    text_only: int = 0  # encoded listings without a usable photo
    seconds: float = 0.0
    listings_per_s: float = 0.0
    batch_size: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def combine_embeddings(text: np.ndarray, image: np.ndarray, has_image: np.ndarray) -> np.ndarray:
    """Listing vectors: normalise(text + image) where a photo exists, else the text vector."""
    has_image = np.asarray(has_image, bool)
    combined = np.asarray(text, np.float32) + np.where(has_image[:, None], image, 0.0).astype(np.float32)
    return normalize_rows(combined)


def content_hash(listing, catalog) -> str:
    """What the embeddings of a listing depend on: its text, its photo ids and their file sizes."""
    digest = hashlib.sha256()
    digest.update(listing.title.encode())
    digest.update(b"\0")
    digest.update((listing.description or "").encode())
    for image_id in listing.image_ids:
        path = catalog.image_path(image_id)
        size = path.stat().st_size if path is not None and path.is_file() else -1
        digest.update(f"\0{image_id}:{size}".encode())
    return digest.hexdigest()


def ensure_table(catalog) -> None:
    metadata.create_all(catalog.engine, tables=[listing_embeddings])


def _load_photo(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _encode_chunk(model, catalog, listings, image_batch_size: int, text_batch_size: int, stats: EmbedStats):
    text = model.encode_texts([listing.text for listing in listings], batch_size=text_batch_size)
    photos, owners = [], []
    for row, listing in enumerate(listings):
        for image_id in listing.image_ids:
            path = catalog.image_path(image_id)
            try:
                if path is None:
                    raise FileNotFoundError(f"image {image_id} is not in the catalogue")
                photos.append(_load_photo(path))
                owners.append(row)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                stats.image_errors += 1
                message = f"listing {listing.id}: photo {image_id} skipped ({type(error).__name__}: {error})"
                stats.errors.append(message)
                logger.warning(message)
    image = np.zeros_like(text)
    counts = np.zeros(len(listings), np.int64)
    if photos:
        photo_vectors = model.encode_images(photos, batch_size=image_batch_size)
        owners_array = np.asarray(owners)
        np.add.at(image, owners_array, photo_vectors)
        np.add.at(counts, owners_array, 1)
        stats.images_encoded += len(photos)
    has_image = counts > 0
    image[has_image] = normalize_rows(image[has_image])
    return text, image, has_image, counts


def embed_catalog(model, catalog, batch_size: int = 64, *, image_batch_size: int = 32, progress: bool = True,
                  prune: bool = True) -> EmbedStats:
    """Encode new and changed listings of ``catalog`` with ``model`` and store them (incremental, resumable).

    batch_size: listings per encoding step and per database transaction (their photos are encoded in
    batches of image_batch_size). prune: delete stored rows (of this model) for listings no longer in the
    catalogue. Returns counts and throughput.
    """
    if batch_size < 1 or image_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, image_batch_size={image_batch_size}")
    started = time.perf_counter()
    ensure_table(catalog)
    fingerprint = model.fingerprint
    table = listing_embeddings
    with catalog.engine.connect() as conn:
        stored = dict(conn.execute(
            select(table.c.listing_id, table.c.content_hash).where(table.c.model_fingerprint == fingerprint)
        ).all())
    stats = EmbedStats(batch_size=batch_size)
    todo, seen = [], set()
    for listings in catalog.iter_listings(batch_size=500):
        for listing in listings:
            seen.add(listing.id)
            digest = content_hash(listing, catalog)
            if stored.get(listing.id) == digest:
                stats.up_to_date += 1
            else:
                todo.append((listing, digest))
    stats.listings = len(seen)
    logger.info("embed: %d listings, %d up to date, %d to encode (model %s)",
                stats.listings, stats.up_to_date, len(todo), fingerprint[:12])
    bar = tqdm(total=len(todo), desc="embed", unit="listing", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        listings = [listing for listing, _ in chunk]
        text, image, has_image, counts = _encode_chunk(model, catalog, listings, image_batch_size, batch_size, stats)
        vectors = combine_embeddings(text, image, has_image)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        rows = [{
            "listing_id": listing.id, "model_fingerprint": fingerprint, "content_hash": digest,
            "dim": int(text.shape[1]), "has_image": bool(has_image[i]), "n_images": int(counts[i]),
            "text": text[i].tobytes(), "image": image[i].tobytes(), "listing": vectors[i].tobytes(),
            "updated_at": now,
        } for i, (listing, digest) in enumerate(chunk)]
        with catalog.engine.begin() as conn:
            ids = [row["listing_id"] for row in rows]
            conn.execute(delete(table).where(table.c.model_fingerprint == fingerprint, table.c.listing_id.in_(ids)))
            conn.execute(table.insert(), rows)
        stats.encoded += len(rows)
        stats.text_only += int((~has_image).sum())
        bar.update(len(rows))
    bar.close()
    if prune:
        stale = [listing_id for listing_id in stored if listing_id not in seen]
        with catalog.engine.begin() as conn:
            for begin in range(0, len(stale), 500):
                part = stale[begin : begin + 500]
                conn.execute(delete(table).where(table.c.model_fingerprint == fingerprint,
                                                 table.c.listing_id.in_(part)))
        stats.removed = len(stale)
    stats.seconds = time.perf_counter() - started
    stats.listings_per_s = stats.encoded / stats.seconds if stats.encoded and stats.seconds > 0 else 0.0
    logger.info("embed: encoded %d listings (%d photos, %d unreadable) in %.1fs, %.1f listings/s; removed %d",
                stats.encoded, stats.images_encoded, stats.image_errors, stats.seconds, stats.listings_per_s,
                stats.removed)
    return stats


def load_embeddings(catalog, fingerprint: str) -> EmbeddingTable:
    """Stored embeddings of ``fingerprint`` for the listings currently in the catalogue, ordered by id.

    Raises LookupError when the catalogue has listings but none is embedded with this model (the fix
    is `marketsearch embed`); listings added since the last embed run are left out with a warning.
    """
    ensure_table(catalog)
    table = listing_embeddings
    current = catalog.listing_ids()
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.listing_id, table.c.dim, table.c.has_image, table.c.text, table.c.image, table.c.listing)
            .where(table.c.model_fingerprint == fingerprint)
            .order_by(table.c.listing_id)
        ).all()
    by_id = {row.listing_id: row for row in rows}
    ids = [listing_id for listing_id in current if listing_id in by_id]
    if current and not ids:
        raise LookupError(
            f"no embeddings stored for model {fingerprint[:12]} in {catalog.url}; run `marketsearch embed` "
            f"after training (or after replacing the model)"
        )
    missing = len(current) - len(ids)
    if missing:
        logger.warning("%d of %d listings have no embedding for model %s; run `marketsearch embed`",
                       missing, len(current), fingerprint[:12])
    if not ids:
        empty = np.zeros((0, 0), np.float32)
        return EmbeddingTable([], empty, empty, np.zeros(0, bool), empty)
    dim = by_id[ids[0]].dim

    def stack(column: str) -> np.ndarray:
        return np.stack([np.frombuffer(getattr(by_id[i], column), np.float32, count=dim) for i in ids]).copy()

    return EmbeddingTable(
        ids=ids, text=stack("text"), image=stack("image"),
        has_image=np.array([bool(by_id[i].has_image) for i in ids]), listing=stack("listing"),
    )
