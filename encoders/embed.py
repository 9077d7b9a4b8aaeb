"""Catalogue embeddings: encode every listing once per model, store the vectors in the catalogue database.

Per listing: the text vector (title + description), the image vector (mean of the listing's photo
embeddings, re-normalised) and the listing vector the index holds (normalised sum of the two, or
whichever exists). Rows are keyed by (listing id, model fingerprint) and carry a content hash, so a
re-run encodes only new or changed listings and an interrupted run resumes where it stopped (each batch
is committed in its own transaction). With frozen backbones (the default profile), photos whose pooled
features training already computed are read from the workspace's feature cache and only go through
the trained head, so embedding right after training does not run the image backbone again.

Beside them, from the same forward pass, the listing's *photo vector*: each photo's appearance vector
(``encoders.appearance``: the image tower's pooled backbone output before the projection head, joined with the
photo's colour signature), averaged over the listing's photos and re-normalised, stored as float16
(``listing_photo_vectors``). The re-ranker compares a query photo with it (``photo_sim``): the raw backbone keeps
the near-duplicate detail that the trained head, mapping photos into the shared text-image space, gives up, and
the colour signature the colours, background and light that photos of one item share. float16 listing means
cost ``2 * (pooled_dim + 512)`` bytes per listing (3.8 KiB with MobileNetV2's
1,440 with its mid-level features, 390 MB at 100k listings).
The colour signature needs the decoded photo: the decoding workers compute it beside the pixels, and decode the
photos whose pooled features come from the feature cache for it alone (a second stream).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
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

from encoders.appearance import (
    AppearancePixels,
    appearance_vectors,
    colour_signature,
    colour_signatures,
    photo_vector_dim,
)
from encoders.features import FeatureCache, photo_key
from encoders.photo_stream import PREFETCH_PER_WORKER, photo_pixels
from encoders.served import EncodedPhoto

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
PHOTO_VECTOR_DTYPE = np.float16
# Listing texts per forward. The tower sorts texts by length before batching, so small batches pad little:
# a chunk of 64 dev listings padded to its longest text (128 tokens; median 46) took 1.5-2x the time of
# batches of 16, with the same vectors (docs/benchmarks.md, "Catalogue encoding").
TEXT_BATCH_SIZE = 16
listing_photo_vectors = Table(
    "listing_photo_vectors",
    metadata,
    Column("listing_id", String, primary_key=True),
    Column("model_fingerprint", String(64), primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("n_photos", Integer, nullable=False),  # 0: no usable photo, the vector is empty
    # float16 (dim,), L2-normalised mean of the photo vectors; dim = pooled_dim + COLOUR_DIM names the recipe
    # (encoders.appearance): rows of another dim were made by an older one and are re-encoded
    Column("vector", LargeBinary, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# The change-log sequence number (catalog.store.Catalog.settled_change) read before an `embed_catalog` run read the
# catalogue: the stored embeddings of this model reflect every change up to it. `marketsearch index` publishes it
# as the index set's checkpoint; a serving process replays the change log past it.
embedding_checkpoints = Table(
    "embedding_checkpoints",
    metadata,
    Column("model_fingerprint", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
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
    # float16 (n, p): L2-normalised mean of the photos' appearance vectors (encoders.appearance), zeros where the
    # listing has none; None when the catalogue stores no photo vectors for this model (run `marketsearch embed`)
    photo: np.ndarray | None = None
    has_photo: np.ndarray | None = None  # bool (n,): the row of `photo` holds a vector

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of = {listing_id: row for row, listing_id in enumerate(self.ids)}
        if self.photo is not None:
            if len(self.photo) != len(self.ids):
                raise ValueError(f"photo has {len(self.photo)} rows for {len(self.ids)} listing ids")
            if self.has_photo is None:
                self.has_photo = np.abs(self.photo).max(axis=1) > 0 if len(self.photo) else np.zeros(0, bool)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.listing.shape[1])

    def photo_rows(self) -> tuple[list[str], np.ndarray]:
        """The listings that have a photo vector and their vectors as float32 (what the photo index holds);
        no rows when the table has no photo vectors."""
        if self.photo is None:
            return [], np.zeros((0, 0), np.float32)
        ids = [listing_id for listing_id, present in zip(self.ids, self.has_photo.tolist()) if present]
        return ids, self.photo[self.has_photo].astype(np.float32)


@dataclass
class EmbedStats:
    listings: int = 0  # in the catalogue
    encoded: int = 0  # new or changed, encoded in this run
    up_to_date: int = 0  # skipped: same content, same model
    removed: int = 0  # rows of listings no longer in the catalogue
    images_encoded: int = 0
    images_from_cache: int = 0  # of images_encoded: pooled features read from the training feature cache
    image_errors: int = 0  # unreadable / missing photo files (logged, listing keeps its other photos)
    text_only: int = 0  # encoded listings without a usable photo
    seconds: float = 0.0
    # of ``seconds``: encoding the listing texts, and the photo path (waiting for decoded pixels, then the
    # image forwards); the rest is planning, database reads and writes
    text_seconds: float = 0.0
    photo_seconds: float = 0.0
    listings_per_s: float = 0.0
    batch_size: int = 0
    errors: list[str] = field(default_factory=list)
    checkpoint: int = 0  # the change-log seq these embeddings reflect (recorded when the run completes)

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


def encode_images_with_photo_vectors(model, images: list, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Shared-space embeddings and photo vectors of ``images`` from one forward pass.

    Returns ``(embeddings float32 (n, embed_dim), photo_vectors float32 (n, pooled_dim + COLOUR_DIM))``, both
    L2-normalised: the embeddings are what ``model.encode_images`` returns, the photo vectors the image tower's
    pooled backbone output before its projection head joined with the photo's colour signature
    (``encoders.appearance.appearance_vectors``).
    """
    images = list(images)
    embeddings, pooled = model.image_tower.encode_with_pooled(images, batch_size=batch_size)
    return embeddings, appearance_vectors(pooled, colour_signatures(images))


def model_photo_dim(model) -> int:
    """The dimension of the photo vectors ``model`` makes (its image backbone's outputs and the colour signature)."""
    return photo_vector_dim(model.image_tower.pooled_dim)


def mean_photo_vectors(photo_vectors: np.ndarray, owners: np.ndarray, n_listings: int) -> np.ndarray:
    """Per listing, the normalised mean of its photos' vectors (``owners[i]`` = listing row of photo i);
    zero rows for listings without a photo. float32 (n_listings, p)."""
    photo_vectors = np.asarray(photo_vectors, np.float32)
    out = np.zeros((n_listings, photo_vectors.shape[1] if photo_vectors.ndim == 2 else 0), np.float32)
    if len(photo_vectors):
        np.add.at(out, np.asarray(owners, np.int64), photo_vectors)
        present = np.abs(out).max(axis=1) > 0
        out[present] = normalize_rows(out[present])
    return out


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
    metadata.create_all(catalog.engine, tables=[listing_embeddings, listing_photo_vectors, embedding_checkpoints])


def embedding_checkpoint(catalog, fingerprint: str) -> int:
    """The change-log seq the stored embeddings of ``fingerprint`` reflect (0: unknown, replay everything)."""
    ensure_table(catalog)
    with catalog.engine.connect() as conn:
        seq = conn.execute(select(embedding_checkpoints.c.seq)
                           .where(embedding_checkpoints.c.model_fingerprint == fingerprint)).scalar_one_or_none()
    return int(seq or 0)


def _record_checkpoint(catalog, fingerprint: str, seq: int) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    with catalog.engine.begin() as conn:
        conn.execute(delete(embedding_checkpoints).where(embedding_checkpoints.c.model_fingerprint == fingerprint))
        conn.execute(embedding_checkpoints.insert(),
                     [{"model_fingerprint": fingerprint, "seq": seq, "updated_at": now}])


@dataclass
class _ChunkPhotos:
    """Where the photos of one chunk of listings come from: files to decode or the training feature cache."""

    fresh_owners: list[int] = field(default_factory=list)  # listing row of each photo file to encode
    fresh_ids: list[str] = field(default_factory=list)
    fresh_paths: list[Path] = field(default_factory=list)
    cached_keys: list[str] = field(default_factory=list)
    cached_owners: list[int] = field(default_factory=list)
    cached_ids: list[str] = field(default_factory=list)
    cached_paths: list[Path] = field(default_factory=list)  # decoded for their colour signature only


def _skip_photo(stats: EmbedStats, listing_id: str, image_id: str, reason: str) -> None:
    stats.image_errors += 1
    message = f"listing {listing_id}: photo {image_id} skipped ({reason})"
    stats.errors.append(message)
    logger.warning(message)


def _plan_photos(catalog, listings, stats: EmbedStats, photo_cache: FeatureCache | None) -> _ChunkPhotos:
    plan = _ChunkPhotos()
    for row, listing in enumerate(listings):
        for image_id in listing.image_ids:
            path = catalog.image_path(image_id)
            try:
                if path is None:
                    raise FileNotFoundError(f"image {image_id} is not in the catalogue")
                key = photo_key(image_id, path) if photo_cache is not None else None
            except (OSError, ValueError) as error:
                _skip_photo(stats, listing.id, image_id, f"{type(error).__name__}: {error}")
                continue
            if key is not None and key in photo_cache.row_of:
                plan.cached_keys.append(key)
                plan.cached_owners.append(row)
                plan.cached_ids.append(image_id)
                plan.cached_paths.append(path)
            else:
                plan.fresh_owners.append(row)
                plan.fresh_ids.append(image_id)
                plan.fresh_paths.append(path)
    return plan


def _encode_chunk(model, listings, plan: _ChunkPhotos, pixels: Iterator, colours: Iterator, image_batch_size: int,
                  text_batch_size: int, stats: EmbedStats, photo_cache: FeatureCache | None = None):
    """Vectors of one chunk. ``pixels`` yields the (preprocessed pixels, colour signature) pair, or the failure, of
    each of ``plan``'s photo files to encode, in order; ``colours`` the colour signature (or the failure) of each
    photo whose pooled features come from the feature cache (``photo_stream.photo_pixels``)."""
    started = time.perf_counter()
    text = model.encode_texts([listing.text for listing in listings], batch_size=text_batch_size)
    photos_started = time.perf_counter()
    stats.text_seconds += photos_started - started
    decoded, decoded_colours, owners = [], [], []
    for row, image_id in zip(plan.fresh_owners, plan.fresh_ids):
        both, failure = next(pixels)
        if failure is not None:
            _skip_photo(stats, listings[row].id, image_id, failure)
            continue
        decoded.append(both[0])
        decoded_colours.append(both[1])
        owners.append(row)
    embeddings, photo_vectors = [], []
    if decoded:
        fresh_embeddings, pooled = photo_outputs(model.image_tower, decoded, image_batch_size)
        embeddings.append(fresh_embeddings)
        photo_vectors.append(appearance_vectors(pooled, np.stack(decoded_colours)))
    cached_keys, cached_colours = [], []
    for row, image_id, key in zip(plan.cached_owners, plan.cached_ids, plan.cached_keys):
        colour, failure = next(colours)
        if failure is not None:
            _skip_photo(stats, listings[row].id, image_id, failure)
            continue
        cached_keys.append(key)
        cached_colours.append(colour)
        owners.append(row)
    stats.photo_seconds += time.perf_counter() - photos_started
    if cached_keys:
        pooled = photo_cache.get(cached_keys)
        embeddings.append(model.image_tower.embed_pooled(pooled))
        photo_vectors.append(appearance_vectors(pooled, np.stack(cached_colours)))
        stats.images_from_cache += len(cached_keys)
    image = np.zeros_like(text)
    counts = np.zeros(len(listings), np.int64)
    photo = None
    if embeddings:
        owners_array = np.asarray(owners, np.int64)
        np.add.at(image, owners_array, np.concatenate(embeddings))
        np.add.at(counts, owners_array, 1)
        photo = mean_photo_vectors(np.concatenate(photo_vectors), owners_array, len(listings))
        stats.images_encoded += len(owners_array)
    has_image = counts > 0
    image[has_image] = normalize_rows(image[has_image])
    return text, image, has_image, counts, photo


def photo_outputs(image_tower, items: list, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, pooled) of what the photo stream gave: photos encoded in the workers already
    (``EncodedPhoto``), or their pixels, forwarded here in batches of ``batch_size``."""
    if isinstance(items[0], EncodedPhoto):
        return np.stack([item.embedding for item in items]), np.stack([item.pooled for item in items])
    return image_tower.encode_pixels_with_pooled(np.stack(items), batch_size=batch_size)


def photo_transform(image_tower, workers: int):
    """What a photo stream's workers do to each photo: with two workers or more and the served model's image tower,
    decode it and run the tower's graph there (``encoders.served.PhotoGraphEncoder``); else decode and preprocess
    it for batched forwards in this process (inline, one worker, the torch towers). One worker running one-thread
    forwards leaves a core idle: on 2 cores it encoded 96 photos/s, against 125-130 when it only decoded and this
    process forwarded with two threads; two such workers 177-181 (docs/benchmarks.md, "Thirteenth session")."""
    encoder = getattr(image_tower, "photo_encoder", None)
    in_workers = encoder() if workers >= 2 and encoder is not None else None
    return in_workers if in_workers is not None else image_tower.eval_transform()


def photo_streams(plans: list[_ChunkPhotos], transform, *, workers: int, ahead: int | None = None
                  ) -> tuple[Iterator, Iterator]:
    """The two decoding streams of ``plans``' photos: (pixels, colour signature) of the files to encode, through
    the image tower's eval ``transform``, and the colour signatures of those whose pooled features are cached."""
    pixels = photo_pixels([path for plan in plans for path in plan.fresh_paths], AppearancePixels(transform),
                          workers=workers, ahead=ahead)
    colours = photo_pixels([path for plan in plans for path in plan.cached_paths], colour_signature,
                           workers=workers, ahead=ahead)
    return pixels, colours


@dataclass
class EncodedListings:
    """What ``encode_listings`` computes for a list of listings (rows in the listings' order)."""

    text: np.ndarray  # float32 (n, d), L2-normalised
    image: np.ndarray  # float32 (n, d), L2-normalised mean of the photo embeddings, zeros without a photo
    has_image: np.ndarray  # bool (n,)
    n_images: np.ndarray  # int64 (n,), photos encoded per listing
    listing: np.ndarray  # float32 (n, d), `combine_embeddings`: what the vector index holds
    photo: np.ndarray | None  # float32 (n, p), normalised mean of the photos' appearance vectors; None without photos

    def photo_rows(self, dim: int) -> np.ndarray:
        """The photo vectors as stored (``PHOTO_VECTOR_DTYPE`` (n, dim), zeros without a photo; ``dim``:
        ``model_photo_dim(model)``)."""
        stored = np.zeros((len(self.text), dim), PHOTO_VECTOR_DTYPE)
        if self.photo is not None:
            stored[self.n_images > 0] = self.photo[self.n_images > 0].astype(PHOTO_VECTOR_DTYPE)
        return stored


def encode_listings(model, catalog, listings, *, text_batch_size: int = TEXT_BATCH_SIZE, image_batch_size: int = 32,
                    stats: EmbedStats | None = None, photo_cache: FeatureCache | None = None,
                    plan: _ChunkPhotos | None = None, pixels: Iterator | None = None,
                    colours: Iterator | None = None) -> EncodedListings:
    """Encode ``listings`` (their text and their photos read from ``catalog``) with ``model``.

    The one encoding path of catalogue listings: `embed_catalog` (batch, on Ray too) and the serving processes'
    live follower (search/live.py) all call it, so a listing created live and the same listing embedded in batch
    get the same vectors. Unreadable photos are skipped with a warning (counted in ``stats``). ``plan`` and
    ``pixels`` and ``colours``: the photos' plan (`_plan_photos`) and their two streams (`photo_streams`) that
    decode ahead in worker processes; without them the photos are decoded here."""
    stats = stats if stats is not None else EmbedStats()
    if plan is None:
        plan = _plan_photos(catalog, listings, stats, photo_cache)
    if pixels is None or colours is None:
        pixels, colours = photo_streams([plan], model.image_tower.eval_transform(), workers=0)
    text, image, has_image, counts, photo = _encode_chunk(model, listings, plan, pixels, colours, image_batch_size,
                                                          text_batch_size, stats, photo_cache)
    return EncodedListings(text=text, image=image, has_image=has_image, n_images=counts,
                           listing=combine_embeddings(text, image, has_image), photo=photo)


def open_photo_cache(model, feature_cache: str | os.PathLike | None) -> FeatureCache | None:
    """The training run's cache of this image backbone's pooled photo features, read-only, if it exists.

    The cache folder is named by ``backbone_key`` (architecture, preprocessing, pooling and a hash of the
    weights), so a fine-tuned or different backbone never reads features that are not its own.
    """
    if feature_cache is None:
        return None
    key = model.image_tower.feature_cache_key
    if key is None:
        logger.info("the model's graphs do not name their feature cache (exported before it was recorded): every "
                    "photo is decoded and encoded; `marketsearch export-onnx` records it")
        return None
    cache = FeatureCache(Path(feature_cache) / key)
    return cache if cache.keys else None


# Encodes lists of listings and yields each list with its vectors; `embed_catalog` uses this process's model
# by default, `encoders.ray_embed.ray_encoder` actors on a Ray cluster.
ChunkEncoder = Callable[[list[list]], Iterator[tuple[list, EncodedListings]]]


def embed_catalog(model, catalog, batch_size: int = 64, *, image_batch_size: int = 32, progress: bool = True,
                  prune: bool = True, feature_cache: str | os.PathLike | None = None,
                  encode_chunks: ChunkEncoder | None = None, workers: int = 1) -> EmbedStats:
    """Encode new and changed listings of ``catalog`` with ``model`` and store them (incremental, resumable).

    batch_size: listings per encoding step and per database transaction (their photos are encoded in
    batches of image_batch_size). prune: delete stored rows (of this model) for listings no longer in the
    catalogue. feature_cache: the workspace's frozen-feature cache (``Workspace.feature_cache_dir``):
    photos whose pooled features training already computed with this very backbone skip the backbone
    and go through the trained head only (read-only: photos not in it are encoded as usual, not added).
    workers: processes decoding and preprocessing photos ahead of the forwards (0: inline, one after the other), per
    stream: the photos to encode, and those read from the feature cache (decoded for their colour signature).
    encode_chunks: where the listings are encoded (default: here, with ``model``); the vectors are the same.
    Returns counts and throughput.
    """
    if batch_size < 1 or image_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, image_batch_size={image_batch_size}")
    started = time.perf_counter()
    ensure_table(catalog)
    # read (settled) before the catalogue is: a change committed while this run reads is replayed, never lost
    checkpoint = catalog.settled_change()
    fingerprint = model.fingerprint
    photo_cache = open_photo_cache(model, feature_cache)
    table, photo_table = listing_embeddings, listing_photo_vectors
    with catalog.engine.connect() as conn:
        stored = dict(conn.execute(
            select(table.c.listing_id, table.c.content_hash).where(table.c.model_fingerprint == fingerprint)
        ).all())
        photo_rows_stored = conn.execute(
            select(photo_table.c.listing_id, photo_table.c.content_hash, photo_table.c.dim)
            .where(photo_table.c.model_fingerprint == fingerprint)
        ).all()
    # a photo vector of another dimension was made by an older recipe (encoders.appearance): its listing is redone
    photo_dim = model_photo_dim(model)
    stored_photo = {row.listing_id: row.content_hash for row in photo_rows_stored if row.dim == photo_dim}
    outdated_photo = len(photo_rows_stored) - len(stored_photo)
    if outdated_photo:
        logger.info("embed: %d stored photo vectors of model %s were made by an older recipe (not %d-d): "
                    "re-encoding their listings", outdated_photo, fingerprint[:12], photo_dim)
    stats = EmbedStats(batch_size=batch_size)
    todo, seen = [], set()
    for listings in catalog.iter_listings(batch_size=500):
        for listing in listings:
            seen.add(listing.id)
            digest = content_hash(listing, catalog)
            # up to date only with both rows: embeddings stored before photo vectors existed are redone
            if stored.get(listing.id) == digest and stored_photo.get(listing.id) == digest:
                stats.up_to_date += 1
            else:
                todo.append((listing, digest))
    stats.listings = len(seen)
    logger.info("embed: %d listings, %d up to date, %d to encode (model %s)",
                stats.listings, stats.up_to_date, len(todo), fingerprint[:12])
    bar = tqdm(total=len(todo), desc="embed", unit="listing", disable=not progress)
    digest_of = {listing.id: digest for listing, digest in todo}
    chunks = [[listing for listing, _ in todo[start : start + batch_size]] for start in range(0, len(todo), batch_size)]
    encoded_elsewhere = encode_chunks is not None  # then the photo counts come back with the vectors
    if encode_chunks is None:
        def encode_chunks(chunks):
            plans = [_plan_photos(catalog, listings, stats, photo_cache) for listings in chunks]
            # two forward batches ahead: the workers decode the next batch while this one runs the forward
            pixels, colours = photo_streams(plans, photo_transform(model.image_tower, workers), workers=workers,
                                            ahead=2 * image_batch_size + PREFETCH_PER_WORKER * workers)
            for listings, plan in zip(chunks, plans):
                yield listings, encode_listings(model, catalog, listings,
                                                image_batch_size=image_batch_size, stats=stats,
                                                photo_cache=photo_cache, plan=plan, pixels=pixels, colours=colours)
    for listings, encoded in encode_chunks(chunks):
        chunk = [(listing, digest_of[listing.id]) for listing in listings]
        if encoded_elsewhere:
            stats.images_encoded += int(encoded.n_images.sum())
        text, image, has_image, counts, photo = (encoded.text, encoded.image, encoded.has_image, encoded.n_images,
                                                 encoded.photo)
        vectors = encoded.listing
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        rows = [{
            "listing_id": listing.id, "model_fingerprint": fingerprint, "content_hash": digest,
            "dim": int(text.shape[1]), "has_image": bool(has_image[i]), "n_images": int(counts[i]),
            "text": text[i].tobytes(), "image": image[i].tobytes(), "listing": vectors[i].tobytes(),
            "updated_at": now,
        } for i, (listing, digest) in enumerate(chunk)]
        photo_rows = [{
            "listing_id": listing.id, "model_fingerprint": fingerprint, "content_hash": digest,
            "dim": photo_dim, "n_photos": int(counts[i]),
            "vector": photo[i].astype(PHOTO_VECTOR_DTYPE).tobytes() if counts[i] else b"",
            "updated_at": now,
        } for i, (listing, digest) in enumerate(chunk)]
        with catalog.engine.begin() as conn:
            ids = [row["listing_id"] for row in rows]
            for stored_table in (table, photo_table):
                conn.execute(delete(stored_table).where(stored_table.c.model_fingerprint == fingerprint,
                                                        stored_table.c.listing_id.in_(ids)))
            conn.execute(table.insert(), rows)
            conn.execute(photo_table.insert(), photo_rows)
        stats.encoded += len(rows)
        stats.text_only += int((~has_image).sum())
        bar.update(len(rows))
    bar.close()
    if prune:
        stale = [listing_id for listing_id in stored if listing_id not in seen]
        stale_photo = [row.listing_id for row in photo_rows_stored if row.listing_id not in seen]
        with catalog.engine.begin() as conn:
            for stored_table, ids in ((table, stale), (photo_table, stale_photo)):
                for begin in range(0, len(ids), 500):
                    part = ids[begin : begin + 500]
                    conn.execute(delete(stored_table).where(stored_table.c.model_fingerprint == fingerprint,
                                                            stored_table.c.listing_id.in_(part)))
        stats.removed = len(stale)
    _record_checkpoint(catalog, fingerprint, checkpoint)
    stats.checkpoint = checkpoint
    stats.seconds = time.perf_counter() - started
    stats.listings_per_s = stats.encoded / stats.seconds if stats.encoded and stats.seconds > 0 else 0.0
    logger.info("embed: encoded %d listings (%d photos, %d of them from the feature cache, %d unreadable) in %.1fs "
                "(texts %.1fs, photos %.1fs), %.1f listings/s; removed %d", stats.encoded, stats.images_encoded,
                stats.images_from_cache, stats.image_errors, stats.seconds, stats.text_seconds, stats.photo_seconds,
                stats.listings_per_s, stats.removed)
    return stats


def load_embeddings(catalog, fingerprint: str, *, photo_dim: int | None = None, photos: bool = True
                    ) -> EmbeddingTable:
    """Stored embeddings of ``fingerprint`` for the listings currently in the catalogue, ordered by id.

    Raises LookupError when the catalogue has listings but none is embedded with this model (the fix
    is `marketsearch embed`); listings added since the last embed run are left out with a warning.
    ``photo_dim``: the photo vectors' dimension the caller's model makes (``model_photo_dim``); stored photo
    vectors of another one (an older recipe) are left out with a warning that says to run `marketsearch embed`.
    ``photos=False`` leaves the photo vectors out (a service reads them from its photo index instead).
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

    photo, has_photo = load_photo_vectors(catalog, fingerprint, ids, photo_dim=photo_dim) if photos else (None, None)
    return EmbeddingTable(
        ids=ids, text=stack("text"), image=stack("image"),
        has_image=np.array([bool(by_id[i].has_image) for i in ids]), listing=stack("listing"),
        photo=photo, has_photo=has_photo,
    )


def load_photo_vectors(catalog, fingerprint: str, ids: list[str], *, photo_dim: int | None = None
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Stored photo vectors of ``ids`` (float16 (n, p), zero rows where none; bool (n,) present), or
    (None, None) when the catalogue holds none for this model (embedded before photo vectors existed) or, with
    ``photo_dim``, none of that dimension (made by an older recipe)."""
    table = listing_photo_vectors
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.listing_id, table.c.dim, table.c.n_photos, table.c.vector)
            .where(table.c.model_fingerprint == fingerprint)
        ).all()
    by_id = {row.listing_id: row for row in rows}
    dims = {row.dim for row in rows}
    if not rows:
        logger.warning("no photo vectors stored for model %s: the re-ranker's photo_sim stays missing; run "
                       "`marketsearch embed` to add them", fingerprint[:12])
        return None, None
    if len(dims) > 1:
        raise ValueError(f"photo vectors of model {fingerprint[:12]} have several dimensions {sorted(dims)}; "
                         "re-run `marketsearch embed`")
    dim = dims.pop()
    if photo_dim is not None and dim != photo_dim:
        logger.warning("the photo vectors stored for model %s are %d-d, made by an older recipe than this code's "
                       "%d-d (raw backbone + colour signature, encoders.appearance): photo_sim stays missing until "
                       "you run `marketsearch embed` (it re-encodes them), then `marketsearch index`", fingerprint[:12],
                       dim, photo_dim)
        return None, None
    photo = np.zeros((len(ids), dim), PHOTO_VECTOR_DTYPE)
    has_photo = np.zeros(len(ids), bool)
    missing = 0
    for row_number, listing_id in enumerate(ids):
        row = by_id.get(listing_id)
        if row is None:
            missing += 1
        elif row.n_photos:
            photo[row_number] = np.frombuffer(row.vector, PHOTO_VECTOR_DTYPE, count=dim)
            has_photo[row_number] = True
    if missing:
        logger.warning("%d of %d listings have no stored photo vector for model %s; run `marketsearch embed`",
                       missing, len(ids), fingerprint[:12])
    return photo, has_photo
