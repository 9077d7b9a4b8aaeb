import dataclasses
import datetime
import shutil

import pytest

from catalog.errors import CatalogError
from catalog.models import Image, Listing
from catalog.store import Catalog, to_db_url
from tests.catalog.damaged import UNUSABLE, damage_pages, good_database


def make_listing(listing_id, category="Home & Garden / Sofas", price=10.0, image_ids=(), day=1):
    levels = tuple(category.split(" / "))
    return Listing(
        id=listing_id,
        title=f"Title {listing_id}",
        description="Büro desk, très bien",
        price=price,
        category=category,
        category_levels=levels,
        top_category=levels[0],
        town="Leeds",
        county="West Yorkshire",
        location="Leeds, West Yorkshire",
        created_at=datetime.date(2022, 2, day),
        image_ids=tuple(image_ids),
    )


def image_row(image_id, listing_id):
    return {
        "id": image_id, "listing_id": listing_id, "path": f"images/{image_id}.jpg", "width": 64, "height": 64,
        "created_at": datetime.date(2022, 2, 1), "source_key": f"key-{image_id}", "source_width": 80,
        "source_height": 40,
    }  # fmt: skip


@pytest.fixture
def catalog(database_url, tmp_path):
    with Catalog(database_url, root=tmp_path) as cat:
        yield cat


def test_listing_round_trip(catalog):
    listing = make_listing("a", image_ids=("i1", "i2"))
    assert catalog.upsert_listings([listing]) == 1
    assert catalog.get_listing("a") == listing
    assert catalog.get_listing("missing") is None


def test_none_fields_round_trip(catalog):
    listing = Listing("n", "t", "", None, "A", ("A",), "A", None, None, "", None, ())
    catalog.upsert_listings([listing])
    assert catalog.get_listing("n") == listing


def test_upsert_replaces_by_id(catalog):
    catalog.upsert_listings([make_listing("a", price=10.0)])
    catalog.upsert_listings([make_listing("a", price=99.0), make_listing("b")])
    assert catalog.count() == 2
    assert catalog.get_listing("a").price == 99.0


def test_get_listings_keeps_order_and_skips_unknown(catalog):
    catalog.upsert_listings([make_listing(i) for i in "abc"])
    assert [x.id for x in catalog.get_listings(["c", "zzz", "a", "b"])] == ["c", "a", "b"]


def test_iter_listings_is_ordered_and_batched(catalog):
    ids = [f"id{n:03d}" for n in range(23)]
    catalog.upsert_listings([make_listing(i) for i in reversed(ids)])
    batches = list(catalog.iter_listings(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 3]
    assert [x.id for b in batches for x in b] == ids == catalog.listing_ids()
    with pytest.raises(ValueError):
        next(catalog.iter_listings(batch_size=0))


def test_images_round_trip_and_paths_resolve_against_the_root(catalog, tmp_path):
    catalog.upsert_listings([make_listing("a", image_ids=("i1",))])
    image = Image("i1", "a", "images/i1.jpg", 64, 64, datetime.date(2022, 2, 3))
    catalog.upsert_images([image])
    assert catalog.get_image("i1") == image
    assert catalog.images_of("a") == [image]
    assert catalog.image_path("i1") == tmp_path / "images" / "i1.jpg"
    assert catalog.image_path("nope") is None


def test_write_batch_removes_stale_images_of_the_listing(catalog):
    catalog.write_batch([make_listing("a", image_ids=("i1", "i2"))], [image_row("i1", "a"), image_row("i2", "a")])
    assert [i.id for i in catalog.images_of("a")] == ["i1", "i2"]
    catalog.write_batch([make_listing("a", image_ids=("i2",))], [image_row("i2", "a")])
    assert catalog.get_image("i1") is None and catalog.get_image("i2") is not None
    assert catalog.stats()["images"] == 1


def test_delete_listing_removes_its_images(catalog):
    catalog.write_batch([make_listing("a", image_ids=("i1",)), make_listing("b")], [image_row("i1", "a")])
    assert catalog.delete_listing("a") is True
    assert catalog.delete_listing("a") is False
    assert catalog.get_image("i1") is None and catalog.count() == 1


def test_stats_and_categories(catalog):
    catalog.upsert_listings(
        [
            make_listing("a", "Appliances / Fridges", price=0.0, image_ids=("i1",), day=3),
            make_listing("b", "Appliances", price=250.0, day=1),
            make_listing("c", "Toys / Bears", price=5.0, day=9),
        ]
    )
    stats = catalog.stats()
    assert stats["listings"] == 3
    assert stats["per_category"] == {"Appliances": 2, "Toys": 1}
    assert stats["text_only"] == 2 and stats["free"] == 1
    assert (stats["price_min"], stats["price_max"]) == (0.0, 250.0)
    assert (stats["created_first"], stats["created_last"]) == ("2022-02-01", "2022-02-09")
    assert catalog.categories() == ["Appliances", "Toys"]


def test_plain_path_and_url_open_the_same_database(tmp_path):
    path = tmp_path / "sub" / "cat.db"
    assert to_db_url(path) == f"sqlite:///{path.resolve()}"
    Catalog(path).upsert_listings([make_listing("a")])
    assert Catalog(f"sqlite:///{path}").count() == 1


def test_a_copied_workspace_resolves_images_in_the_copy(tmp_path):
    with Catalog(tmp_path / "ws" / "catalog.db") as catalog:
        catalog.write_batch([make_listing("a", image_ids=("i1",))], [image_row("i1", "a")])
    shutil.copytree(tmp_path / "ws", tmp_path / "copy")
    with Catalog(tmp_path / "copy" / "catalog.db") as copy:
        assert copy.image_path("i1") == tmp_path / "copy" / "images" / "i1.jpg"


def test_a_failed_write_leaves_nothing_behind(catalog):
    catalog.upsert_listings([make_listing("a")])
    broken = [make_listing("b"), make_listing("c")]
    bad_row = image_row("i9", "b") | {"width": None}  # violates NOT NULL inside the transaction
    with pytest.raises(Exception):
        catalog.write_batch(broken, [bad_row])
    assert catalog.listing_ids() == ["a"]


def test_a_database_from_another_schema_version_is_refused(tmp_path):
    from sqlalchemy import update

    from catalog import schema

    catalog = Catalog(tmp_path / "catalog.db")
    with catalog.engine.begin() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "schema_version").values(value="99"))
    catalog.close()
    with pytest.raises(CatalogError, match="schema version 99"):
        Catalog(tmp_path / "catalog.db")



# -- unusable database files: one clear error (CatalogError), never SQLAlchemy's traceback ----------------


@pytest.mark.parametrize("damage", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_database_file_is_one_catalog_error(tmp_path, damage):
    path = tmp_path / "catalog.db"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(CatalogError, match=r"catalog\.db cannot be used: \S") as raised:
        with Catalog(path) as catalog:
            catalog.stats()
    assert "sqlalche.me" not in str(raised.value) and "\n" not in str(raised.value)
    assert path.read_bytes() == before  # nothing written into a file that is not a catalogue


def test_damage_found_after_opening_is_a_catalog_error(tmp_path):
    """Schema pages intact, listing pages garbage: the file opens, and the first query that meets the damage
    raises CatalogError, not SQLAlchemy's DatabaseError."""
    path = tmp_path / "catalog.db"
    good_database(path)
    damage_pages(path)
    with Catalog(path) as catalog, pytest.raises(CatalogError, match="damaged"):
        catalog.stats()


def test_a_catalogue_reopens_with_its_rows(tmp_path):
    good_database(tmp_path / "catalog.db")
    with Catalog(tmp_path / "catalog.db") as catalog:
        assert catalog.count() == 400


def test_every_write_appends_to_the_change_log_in_commit_order(catalog):
    assert catalog.last_change() == 0 and catalog.changes_since(0) == []
    catalog.upsert_listings([make_listing("a"), make_listing("b")])
    catalog.write_batch([make_listing("c")], [])
    assert catalog.delete_listing("a") is True
    assert catalog.delete_listing("missing") is False  # nothing deleted, nothing logged
    changes = catalog.changes_since(0)
    assert [(listing_id, op) for _, listing_id, op in changes] == [
        ("a", "upsert"), ("b", "upsert"), ("c", "upsert"), ("a", "delete"),
    ]
    seqs = [seq for seq, _, _ in changes]
    assert seqs == sorted(seqs) and catalog.last_change() == seqs[-1]
    assert catalog.changes_since(seqs[1]) == changes[2:]
    assert catalog.changes_since(0, limit=1) == changes[:1]


def test_a_listing_keeps_its_status_and_seller(catalog):
    catalog.upsert_listings([dataclasses.replace(make_listing("a"), status="sold", seller_id="s1")])
    listing = catalog.get_listing("a")
    assert (listing.status, listing.seller_id) == ("sold", "s1")
