"""Catalogue embeddings: stored per model, incremental, resumable, robust to bad photo files."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from catalog.store import Catalog
from core.workspace import Workspace
from encoders.embed import combine_embeddings, embed_catalog, load_embeddings


@pytest.fixture()
def workspace_copy(trained_workspace, tmp_path) -> Workspace:
    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    return Workspace.at(tmp_path / "ws")


def test_trained_workspace_has_embeddings_for_every_listing(trained_workspace, trained_model):
    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        table = load_embeddings(catalog, trained_model.fingerprint)
        ids = catalog.listing_ids()
        listings = catalog.get_listings(ids)
    finally:
        catalog.close()
    assert table.ids == ids
    d = trained_model.embed_dim
    assert table.text.shape == table.image.shape == table.listing.shape == (len(ids), d)
    assert table.text.dtype == table.listing.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(table.text, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(table.listing, axis=1), 1, rtol=1e-5)
    has_photo = np.array([bool(x.image_ids) for x in listings])
    np.testing.assert_array_equal(table.has_image, has_photo)
    assert (~has_photo).any(), "the demo catalogue has text-only listings"
    assert not table.image[~table.has_image].any()
    np.testing.assert_allclose(np.linalg.norm(table.image[table.has_image], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(table.listing[~table.has_image], table.text[~table.has_image], rtol=1e-6)
    np.testing.assert_allclose(table.listing, combine_embeddings(table.text, table.image, table.has_image),
                               rtol=1e-6)
    # stored vectors are what the model computes for that listing now
    first = listings[0]
    np.testing.assert_allclose(table.text[0], trained_model.encode_texts([first.text])[0], atol=1e-5)


def test_text_query_finds_its_listing_through_the_stored_vectors(trained_workspace, trained_model):
    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        table = load_embeddings(catalog, trained_model.fingerprint)
        titles = [x.title for x in catalog.get_listings(table.ids)]
    finally:
        catalog.close()
    queries = trained_model.encode_texts(titles)
    top10 = np.argsort(-(queries @ table.listing.T), axis=1)[:, :10]
    hit = (top10 == np.arange(len(titles))[:, None]).any(1).mean()
    assert hit > 0.5  # chance is 10 / 150


def test_rerun_encodes_only_what_changed(workspace_copy, trained_model):
    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        again = embed_catalog(trained_model, catalog, progress=False)
        assert again.encoded == 0 and again.up_to_date == again.listings == catalog.count()
        before = load_embeddings(catalog, trained_model.fingerprint)

        ids = catalog.listing_ids()
        changed = catalog.get_listing(ids[0])
        catalog.upsert_listings([dataclasses.replace(changed, title="Completely different red bicycle")])
        assert catalog.delete_listing(ids[1])
        stats = embed_catalog(trained_model, catalog, progress=False)
        assert (stats.encoded, stats.removed) == (1, 1)
        after = load_embeddings(catalog, trained_model.fingerprint)
        assert ids[1] not in after.row_of and len(after) == len(before) - 1
        assert not np.allclose(after.text[after.row_of[ids[0]]], before.text[before.row_of[ids[0]]])
        unchanged = ids[2]
        np.testing.assert_array_equal(after.listing[after.row_of[unchanged]],
                                      before.listing[before.row_of[unchanged]])
    finally:
        catalog.close()


def test_unreadable_photo_is_reported_not_fatal(workspace_copy, trained_model):
    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        listing = next(x for batch in catalog.iter_listings() for x in batch if len(x.image_ids) >= 1)
        path = catalog.image_path(listing.image_ids[0])
        path.write_bytes(b"this is not a jpeg at all")  # size changes -> the listing is re-encoded
        stats = embed_catalog(trained_model, catalog, progress=False)
        assert stats.encoded == 1 and stats.image_errors == 1
        assert listing.id in stats.errors[0] and listing.image_ids[0] in stats.errors[0]
        table = load_embeddings(catalog, trained_model.fingerprint)
        row = table.row_of[listing.id]
        assert table.has_image[row] == (len(listing.image_ids) > 1)
    finally:
        catalog.close()


def test_interrupted_run_resumes(workspace_copy, trained_model, monkeypatch):
    import encoders.embed as embed_module

    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        table = embed_module.listing_embeddings
        forgotten = catalog.listing_ids()[:48]
        with catalog.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.listing_id.in_(forgotten)))
        calls = {"n": 0}
        original = embed_module.encode_listings

        def crash_on_second_batch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(embed_module, "encode_listings", crash_on_second_batch)
        with pytest.raises(KeyboardInterrupt):
            embed_catalog(trained_model, catalog, batch_size=16, progress=False)
        monkeypatch.setattr(embed_module, "encode_listings", original)
        stats = embed_catalog(trained_model, catalog, batch_size=16, progress=False)
        # the batch committed before the crash survived; only the 32 listings after it are encoded
        assert stats.encoded == 32
        assert stats.up_to_date == catalog.count() - 32
        assert len(load_embeddings(catalog, trained_model.fingerprint)) == catalog.count()
    finally:
        catalog.close()


def test_unknown_model_has_no_embeddings(trained_workspace):
    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        with pytest.raises(LookupError, match="marketsearch embed"):
            load_embeddings(catalog, "0" * 64)
    finally:
        catalog.close()


def test_photo_vectors_are_the_normalised_mean_of_the_photos_appearance_vectors(trained_workspace, trained_model):
    from encoders.appearance import COLOUR_DIM, appearance_vectors, colour_signatures
    from encoders.embed import PHOTO_VECTOR_DTYPE, encode_images_with_photo_vectors, model_photo_dim, normalize_rows

    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        table = load_embeddings(catalog, trained_model.fingerprint)
        listing = next(x for x in catalog.get_listings(table.ids) if len(x.image_ids) >= 2)
        photos = [Image.open(catalog.image_path(p)).convert("RGB") for p in listing.image_ids]
    finally:
        catalog.close()
    tower = trained_model.image_tower
    assert model_photo_dim(trained_model) == tower.pooled_dim + COLOUR_DIM
    assert table.photo.dtype == PHOTO_VECTOR_DTYPE and table.photo.shape == (len(table), model_photo_dim(trained_model))
    np.testing.assert_array_equal(table.has_photo, table.has_image)
    assert not table.photo[~table.has_photo].any()
    np.testing.assert_allclose(np.linalg.norm(table.photo[table.has_photo].astype(np.float32), axis=1), 1, atol=2e-3)

    embeddings, vectors = encode_images_with_photo_vectors(trained_model, photos, batch_size=1)
    # one forward pass gives exactly what the two separate encoders give
    np.testing.assert_allclose(embeddings, trained_model.encode_images(photos), atol=1e-5)
    pooled = tower.encode_pooled(photos)
    np.testing.assert_allclose(vectors, appearance_vectors(pooled, colour_signatures(photos)), atol=1e-5)
    expected = normalize_rows(vectors.sum(0, keepdims=True))[0]
    stored = table.photo[table.row_of[listing.id]].astype(np.float32)
    np.testing.assert_allclose(stored, expected, atol=2e-3)
    # its backbone part alone is the former recipe's vector: the normalised mean of the unit backbone vectors
    np.testing.assert_allclose(normalize_rows(stored[None, : tower.pooled_dim])[0],
                               normalize_rows(normalize_rows(pooled).sum(0, keepdims=True))[0], atol=2e-3)


def test_photo_vectors_of_an_older_recipe_are_never_served_and_are_re_encoded(workspace_copy, trained_model, caplog):
    """Photo vectors stored by the former recipe (the raw backbone alone, pooled_dim wide) are not mixed with this
    recipe's query vectors: loading them says to run `marketsearch embed`, which re-encodes every such listing."""
    from sqlalchemy import select

    from encoders.embed import listing_photo_vectors, model_photo_dim

    tower = trained_model.image_tower
    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        current = load_embeddings(catalog, trained_model.fingerprint)
        with catalog.engine.begin() as conn:  # rewrite them as the former recipe stored them
            rows = conn.execute(select(listing_photo_vectors)).all()
            conn.execute(listing_photo_vectors.delete())
            conn.execute(listing_photo_vectors.insert(), [
                {**row._asdict(), "dim": tower.pooled_dim,
                 "vector": np.frombuffer(row.vector, np.float16)[: tower.pooled_dim].tobytes() if row.n_photos else b""}
                for row in rows])
        with caplog.at_level("WARNING", logger="encoders.embed"):
            old = load_embeddings(catalog, trained_model.fingerprint, photo_dim=model_photo_dim(trained_model))
        assert old.photo is None and old.has_photo is None  # photo_sim stays missing rather than wrong
        assert "older recipe" in caplog.text and "marketsearch embed" in caplog.text
        np.testing.assert_array_equal(old.listing, current.listing)

        stats = embed_catalog(trained_model, catalog, progress=False)
        assert stats.encoded == catalog.count() and stats.up_to_date == 0
        new = load_embeddings(catalog, trained_model.fingerprint, photo_dim=model_photo_dim(trained_model))
        np.testing.assert_allclose(new.photo.astype(np.float32), current.photo.astype(np.float32), atol=1e-3)
        assert embed_catalog(trained_model, catalog, progress=False).encoded == 0
    finally:
        catalog.close()


def test_embeddings_stored_before_photo_vectors_existed_are_redone(workspace_copy, trained_model):
    import encoders.embed as embed_module

    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        with catalog.engine.begin() as conn:
            conn.execute(embed_module.listing_photo_vectors.delete())
        old = load_embeddings(catalog, trained_model.fingerprint)
        assert old.photo is None and old.has_photo is None  # the service then leaves photo_sim missing
        stats = embed_catalog(trained_model, catalog, progress=False)
        assert stats.encoded == catalog.count() and stats.up_to_date == 0
        new = load_embeddings(catalog, trained_model.fingerprint)
        assert new.has_photo.sum() == new.has_image.sum() > 0
        np.testing.assert_allclose(new.listing, old.listing, atol=1e-5)
        assert embed_catalog(trained_model, catalog, progress=False).encoded == 0
    finally:
        catalog.close()


def test_embed_reads_photo_features_from_the_training_cache(workspace_copy, trained_model, tmp_path):
    from sqlalchemy import delete

    from encoders.embed import listing_embeddings, listing_photo_vectors, open_photo_cache
    from encoders.features import FeatureCache

    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        before = load_embeddings(catalog, trained_model.fingerprint)  # encoded by the backbone itself

        def embed_again(feature_cache):
            with catalog.engine.begin() as conn:
                conn.execute(delete(listing_embeddings))
                conn.execute(delete(listing_photo_vectors))
            stats = embed_catalog(trained_model, catalog, progress=False, feature_cache=feature_cache)
            return stats, load_embeddings(catalog, trained_model.fingerprint)

        # training cached every photo of the catalogue: embedding runs no photo through the backbone
        stats, after = embed_again(workspace_copy.feature_cache_dir)
        assert stats.images_encoded > 0 and stats.images_from_cache == stats.images_encoded
        photos = stats.images_encoded
        np.testing.assert_allclose(after.image, before.image, atol=1e-5)
        np.testing.assert_allclose(after.listing, before.listing, atol=1e-5)
        np.testing.assert_allclose(after.photo.astype(np.float32), before.photo.astype(np.float32), atol=2e-3)

        # a cache holding only part of the photos: the rest go through the backbone, same vectors
        full = open_photo_cache(trained_model, workspace_copy.feature_cache_dir)
        partial = FeatureCache(tmp_path / "partial" / full.folder.name)
        half = len(full.keys) // 2
        partial.add(full.keys[:half], full.features[:half])
        stats, mixed = embed_again(tmp_path / "partial")
        assert 0 < stats.images_from_cache < stats.images_encoded == photos
        np.testing.assert_allclose(mixed.image, before.image, atol=1e-5)
        np.testing.assert_array_equal(mixed.has_image, before.has_image)

        # another backbone (here: no cache folder for this model's backbone key) reads nothing
        stats, _ = embed_again(tmp_path / "elsewhere")
        assert stats.images_from_cache == 0 and stats.images_encoded == photos
    finally:
        catalog.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_photo_workers_give_the_vectors_of_inline_encoding(workspace_copy, trained_model, workers):
    from encoders.embed import encode_images_with_photo_vectors, listing_embeddings
    from encoders.photo_stream import load_photo

    catalog = Catalog(workspace_copy.db_url, root=workspace_copy.root)
    try:
        with catalog.engine.begin() as conn:
            conn.execute(listing_embeddings.delete())
        listings = [x for x in catalog.get_listings(catalog.listing_ids()) if x.image_ids][:6]
        stats = embed_catalog(trained_model, catalog, progress=False, workers=workers, batch_size=8)
        table = load_embeddings(catalog, trained_model.fingerprint)
        for listing in listings:
            images = [load_photo(catalog.image_path(i)) for i in listing.image_ids]
            embeddings, photo_vectors = encode_images_with_photo_vectors(trained_model, images)
            mean = embeddings.sum(0) / np.linalg.norm(embeddings.sum(0))
            np.testing.assert_allclose(table.image[table.row_of[listing.id]], mean, atol=1e-5)
            # the colour half of the photo vector is computed in the workers too: the query path's vector
            mean = photo_vectors.sum(0) / np.linalg.norm(photo_vectors.sum(0))
            np.testing.assert_allclose(table.photo[table.row_of[listing.id]].astype(np.float32), mean, atol=2e-3)
    finally:
        catalog.close()
    assert stats.images_from_cache == 0 and stats.images_encoded > 0
    # the run's time is split into the texts' encode and the photo path (what bench.bench_latency reports)
    assert stats.text_seconds > 0 and stats.photo_seconds > 0
    assert stats.text_seconds + stats.photo_seconds <= stats.seconds


def test_listing_texts_in_small_length_sorted_batches_give_the_vectors_of_one_batch(trained_workspace, trained_model):
    from encoders.embed import TEXT_BATCH_SIZE, encode_listings

    catalog = Catalog(trained_workspace.db_url, root=trained_workspace.root)
    try:
        listings = catalog.get_listings(catalog.listing_ids()[: 3 * TEXT_BATCH_SIZE])
        small = encode_listings(trained_model, catalog, listings)
        one_batch = encode_listings(trained_model, catalog, listings, text_batch_size=len(listings))
    finally:
        catalog.close()
    assert len({len(listing.text) for listing in listings}) > TEXT_BATCH_SIZE  # lengths vary: padding differs
    np.testing.assert_allclose(small.text, one_batch.text, atol=1e-5)
    np.testing.assert_allclose(small.listing, one_batch.listing, atol=1e-5)
