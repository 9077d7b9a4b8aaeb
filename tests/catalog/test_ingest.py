import json
import shutil

import pytest

from catalog import store as store_module
from catalog.demo import MANIFEST_NAME
from catalog.export import ExportFormatError
from catalog.ingest import ingest_export
from catalog.labels import LabelEncoder
from catalog.quarantine import read_quarantine_report
from catalog.store import Catalog
from core.workspace import Workspace


def all_listings(catalog):
    return [x for batch in catalog.iter_listings() for x in batch]


def run_ingest(export, workspace, **kwargs):
    return ingest_export(export.products_csv, export.images_csv, export.image_dir, workspace, progress=False, **kwargs)


def test_demo_ingest_matches_the_generator_manifest(demo_export, demo_workspace):
    expected = json.loads((demo_export.products_csv.parent / MANIFEST_NAME).read_text())["expected"]
    catalog = Catalog(demo_workspace.db_url)
    stats = catalog.stats()
    assert stats["listings"] == expected["listings"]
    assert stats["images"] == expected["images"]
    assert stats["text_only"] == expected["text_only"]
    assert stats["categories"] == 13
    report = read_quarantine_report(demo_workspace.quarantine_dir / "latest.csv")
    counts = {}
    for record in report:
        counts[record.reason] = counts.get(record.reason, 0) + 1
    assert counts == expected["quarantined"]
    text_only = (demo_workspace.quarantine_dir / "text-only.csv").read_text().splitlines()
    assert len(text_only) - 1 == expected["text_only"]
    # Every cleaned image is on disk as a square RGB JPEG.
    for listing in all_listings(catalog)[:20]:
        for image_id in listing.image_ids:
            from PIL import Image

            with Image.open(catalog.image_path(image_id)) as img:
                assert img.size == (256, 256) and img.mode == "RGB"


def test_cleaned_listing_fields(demo_workspace):
    listings = all_listings(Catalog(demo_workspace.db_url))
    assert all("Gumtree" not in x.title and "\r" not in x.description for x in listings)
    assert all(x.category.startswith(x.top_category) and x.category_levels[0] == x.top_category for x in listings)
    assert any(x.price == 0.0 for x in listings)
    assert all(x.price is not None and x.price >= 0 for x in listings)
    with_images = [x for x in listings if x.image_ids]
    assert all(x.created_at is not None for x in with_images)


def test_quarantined_rows_keep_their_original_values(demo_workspace):
    report = read_quarantine_report(demo_workspace.quarantine_dir / "latest.csv")
    bad_price = next(r for r in report if r.reason == "bad_price")
    assert bad_price.source == "products" and bad_price.line >= 2
    assert bad_price.raw["price"] in ("POA", "£ offers", "£12.5O", "ask")
    short = next(r for r in report if r.reason == "wrong_field_count")
    assert isinstance(short.raw, list) and len(short.raw) == 4


def test_reingest_is_idempotent_and_uses_the_image_cache(demo_export, demo_workspace, tmp_path):
    shutil.copytree(demo_workspace.root, tmp_path / "ws")
    workspace = Workspace.at(tmp_path / "ws")
    before = all_listings(Catalog(workspace.db_url))
    labels_before = workspace.labels_path.read_text()
    report = run_ingest(demo_export, workspace)
    assert report.images_cleaned == 0 and report.images_cached == report.images_loaded > 0
    assert all_listings(Catalog(workspace.db_url)) == before
    assert workspace.labels_path.read_text() == labels_before
    assert report.unexplained_product_drops == 0 and report.unexplained_image_drops == 0
    assert report.new_classes == []


def test_interrupted_ingest_leaves_a_consistent_catalogue_that_a_rerun_completes(demo_export, tmp_path, monkeypatch):
    workspace = Workspace.at(tmp_path / "ws")
    real_write = store_module.Catalog.write_batch
    calls = []

    def write_then_crash(self, listings, image_rows):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(len(listings))
        return real_write(self, listings, image_rows)

    monkeypatch.setattr(store_module.Catalog, "write_batch", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(demo_export, workspace, batch_size=40)
    catalog = Catalog(workspace.db_url)
    listings = all_listings(catalog)
    assert len(listings) == 40
    for listing in listings:  # each committed listing has all its image rows and files
        for image_id in listing.image_ids:
            assert catalog.get_image(image_id) is not None and catalog.image_path(image_id).is_file()
    assert catalog.stats()["images"] == sum(len(x.image_ids) for x in listings)

    monkeypatch.setattr(store_module.Catalog, "write_batch", real_write)
    report = run_ingest(demo_export, workspace, batch_size=40)
    assert catalog.count() == 150
    assert report.images_cleaned == 0  # the interrupted run had already written every cleaned file


def test_new_categories_are_appended_to_the_label_encoder(demo_export, demo_workspace, tmp_path):
    shutil.copytree(demo_workspace.root, tmp_path / "ws")
    workspace = Workspace.at(tmp_path / "ws")
    old = LabelEncoder.from_json(workspace.labels_path)
    export = tmp_path / "export"
    shutil.copytree(demo_export.products_csv.parent, export)
    with open(export / "Products.csv", "a", encoding="utf-8") as f:
        f.write("9999,new-1,Canoe | in York | Gumtree,Boats / Canoes,A red canoe,£300.00,York\n")
    report = ingest_export(export / "Products.csv", export / "Images.csv", export / "images", workspace, progress=False)
    new = LabelEncoder.from_json(workspace.labels_path)
    assert report.new_classes == ["Boats"]
    assert new.classes == old.classes + ["Boats"]
    assert Catalog(workspace.db_url).get_listing("new-1").image_ids == ()


def test_db_option_writes_to_another_database(demo_export, tmp_path):
    workspace = Workspace.at(tmp_path / "ws")
    db_path = tmp_path / "elsewhere" / "other.db"
    report = run_ingest(demo_export, workspace, db_url=str(db_path))
    assert db_path.is_file() and not workspace.db_path.exists()
    other = Catalog(db_path, root=workspace.root)
    assert other.count() == report.listings_loaded == 150
    some_image = next(x for x in all_listings(other) if x.image_ids).image_ids[0]
    assert other.image_path(some_image).is_file()


def test_missing_files_fail_fast_before_writing_anything(demo_export, tmp_path):
    workspace = Workspace.at(tmp_path / "ws")
    with pytest.raises(ExportFormatError, match="not found"):
        ingest_export(tmp_path / "missing.csv", demo_export.images_csv, demo_export.image_dir, workspace)
    assert not workspace.db_path.exists()


def test_absurd_aspect_ratios_are_quarantined_and_the_cleaning_settings_recorded(demo_export, demo_workspace,
                                                                                 tmp_path):
    from PIL import Image

    from catalog.images import ImageCleaningConfig, load_config

    shutil.copytree(demo_workspace.root, tmp_path / "ws")
    workspace = Workspace.at(tmp_path / "ws")
    export = tmp_path / "export"
    shutil.copytree(demo_export.products_csv.parent, export)
    product_id = Catalog(workspace.db_url).listing_ids()[0]
    Image.new("RGB", (3000, 9), (0, 90, 200)).save(export / "images" / "strip-1.jpg", format="PNG")
    with open(export / "Images.csv", "a", encoding="utf-8") as f:
        f.write(f"99999,strip-1,{product_id},https://example.com/strip-1.jpg,ref,01/03/2022\n")
    report = ingest_export(export / "Products.csv", export / "Images.csv", export / "images", workspace, progress=False)
    assert report.quarantined["image_aspect_ratio"] == 1
    assert report.unexplained_image_drops == 0
    [record] = [r for r in read_quarantine_report(workspace.quarantine_dir / "latest.csv")
                if r.reason == "image_aspect_ratio"]
    assert record.record_id == "strip-1" and "3000x9" in record.detail and "8:1" in record.detail
    assert "strip-1" not in Catalog(workspace.db_url).get_listing(product_id).image_ids
    assert load_config(workspace.photo_config_path) == ImageCleaningConfig()


@pytest.mark.postgres
def test_ingest_into_postgresql_stores_the_same_catalogue_as_sqlite(demo_export, demo_workspace, postgres_server,
                                                                    tmp_path):
    shutil.copytree(demo_workspace.root, tmp_path / "ws")  # its cleaned photos: the re-ingest reuses them
    workspace = Workspace.at(tmp_path / "ws")
    url = postgres_server.create_database()
    report = run_ingest(demo_export, workspace, db_url=url)
    assert report.unexplained_product_drops == 0 and report.unexplained_image_drops == 0
    with Catalog(url, root=workspace.root) as server, Catalog(demo_workspace.db_url) as sqlite:
        assert all_listings(server) == all_listings(sqlite)
        assert server.stats() == sqlite.stats()
        some = next(x for x in all_listings(sqlite) if x.image_ids)
        assert server.image_path(some.image_ids[0]).read_bytes() == sqlite.image_path(some.image_ids[0]).read_bytes()
        assert {listing_id for _, listing_id, _ in server.changes_since(0, limit=10_000)} == set(server.listing_ids())
