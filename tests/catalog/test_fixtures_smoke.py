from catalog.labels import LabelEncoder
from catalog.store import Catalog


def test_demo_workspace_is_ingested(demo_workspace):
    catalog = Catalog(demo_workspace.db_url)
    assert catalog.count() == 150
    assert len(catalog.categories()) == 13
    listing = catalog.get_listing(catalog.listing_ids()[0])
    if listing.image_ids:
        assert catalog.image_path(listing.image_ids[0]).is_file()
    assert len(LabelEncoder.from_json(demo_workspace.labels_path)) == 13
