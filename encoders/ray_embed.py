"""Catalogue encoding on a Ray cluster (`marketsearch embed --ray`), with Ray Data.

Actors each load the model bundle once and open the catalogue (for the listings' text and photo files); Ray
Data streams batches of listing ids through them with back-pressure and keeps their order. Every actor runs
the one encoding path, ``encoders.embed.encode_listings``, so the vectors are those of the single-process run;
the driver alone writes them into the catalogue (`embed_catalog`). The workers must reach the catalogue:
the workspace folder on every node (shared storage) and, beyond one machine, a server database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from encoders.embed import ChunkEncoder, EncodedListings, encode_listings, model_photo_dim

logger = logging.getLogger(__name__)


class ListingEncoder:
    """A Ray Data actor: one model bundle and one catalogue connection, reused for every batch."""

    def __init__(self, model_dir: str, db_url: str, root: str, feature_cache: str | None, image_batch_size: int,
                 threads: int) -> None:
        import torch

        from catalog.store import Catalog
        from encoders.bundle import MultiModalModel
        from encoders.embed import open_photo_cache

        torch.set_num_threads(threads)
        self.model = MultiModalModel.load(model_dir)
        self.catalog = Catalog(db_url, root=root)
        self.photo_cache = open_photo_cache(self.model, feature_cache)
        self.image_batch_size = image_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["listing_id"]]
        listings = self.catalog.get_listings(ids)
        if len(listings) != len(ids):  # deleted since the driver listed them: encoded next run, if at all
            found = {listing.id for listing in listings}
            raise LookupError(f"listings vanished while encoding: {[i for i in ids if i not in found][:5]}")
        encoded = encode_listings(self.model, self.catalog, listings,
                                  image_batch_size=self.image_batch_size, photo_cache=self.photo_cache)
        photo = (encoded.photo if encoded.photo is not None
                 else np.zeros((len(ids), model_photo_dim(self.model)), np.float32))
        return {"listing_id": np.asarray(ids, dtype=object), "text": encoded.text, "image": encoded.image,
                "has_image": encoded.has_image, "n_images": encoded.n_images, "listing": encoded.listing,
                "photo": photo.astype(np.float32)}


def ray_encoder(model_dir: str | os.PathLike, db_url: str, root: str | os.PathLike, *, actors: int,
                feature_cache: str | os.PathLike | None = None, image_batch_size: int = 32,
                threads_per_actor: int = 1) -> ChunkEncoder:
    """A ``ChunkEncoder`` for `embed_catalog` that encodes on ``actors`` Ray actors (the cluster must be
    connected: `index.shards.connect_ray`)."""
    import ray.data

    cache = str(feature_cache) if feature_cache is not None and Path(feature_cache).exists() else None

    def encode_chunks(chunks: list[list]) -> Iterator[tuple[list, EncodedListings]]:
        if not chunks:
            return
        by_id = {listing.id: listing for chunk in chunks for listing in chunk}
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = ray.data.from_items([{"listing_id": listing.id} for chunk in chunks for listing in chunk])
        encoded = dataset.map_batches(
            ListingEncoder,
            fn_constructor_kwargs={"model_dir": str(model_dir), "db_url": db_url, "root": str(root),
                                   "feature_cache": cache, "image_batch_size": image_batch_size,
                                   "threads": threads_per_actor},
            batch_size=len(chunks[0]),
            batch_format="numpy",
            concurrency=actors,
            num_cpus=threads_per_actor,
        )
        for batch in encoded.iter_batches(batch_size=len(chunks[0]), batch_format="numpy"):
            listings = [by_id[str(i)] for i in batch["listing_id"]]
            n_images = np.asarray(batch["n_images"], dtype=np.int64)
            yield listings, EncodedListings(
                text=np.asarray(batch["text"], np.float32), image=np.asarray(batch["image"], np.float32),
                has_image=np.asarray(batch["has_image"], bool), n_images=n_images,
                listing=np.asarray(batch["listing"], np.float32),
                photo=np.asarray(batch["photo"], np.float32) if n_images.any() else None,
            )

    return encode_chunks
