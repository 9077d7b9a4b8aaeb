import datetime

import pytest
from PIL import Image

from catalog.export import ExportFormatError, read_export, read_products, read_raw_csv

PRODUCTS_HEADER = ",id,product_name,category,product_description,price,location\n"
IMAGES_HEADER = ",id,product_id,bucket_link,image_ref,create_time\n"


def write_export(tmp_path, product_lines, image_lines, files=()):
    (tmp_path / "Products.csv").write_bytes((PRODUCTS_HEADER + "".join(product_lines)).encode())
    (tmp_path / "Images.csv").write_bytes((IMAGES_HEADER + "".join(image_lines)).encode())
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for name in files:
        Image.new("RGB", (32, 24), (200, 10, 10)).save(image_dir / name)
    return tmp_path / "Products.csv", tmp_path / "Images.csv", image_dir


def product(
    index,
    pid,
    title="Sofa | in Leeds, West Yorkshire | Gumtree",
    category="Home & Garden / Sofas",
    description="Nice sofa",
    price="£1,250.00",
    location="Leeds, West Yorkshire",
):
    """One Products.csv line quoted like the real export: only fields with a comma or quote."""
    fields = [str(index), pid, title, category, description, price, location]
    return ",".join(f'"{f}"' if "," in f else f for f in fields) + "\n"


def test_bare_cr_inside_an_unquoted_field_stays_in_its_row(tmp_path):
    lines = [
        product(1, "p1", description="Line one\rLine two\r\rthree  "),
        product(2, "p2", description="plain"),
    ]
    products, images, image_dir = write_export(tmp_path, lines, [])
    listings, quarantine, rows = read_products(products)
    assert rows == 2 and not quarantine
    assert [x.id for x in listings] == ["p1", "p2"]
    assert listings[0].description == "Line one Line two three"
    assert listings[0].price == 1250.0
    assert (listings[0].town, listings[0].county) == ("Leeds", "West Yorkshire")
    assert listings[0].title == "Sofa"
    assert listings[0].category_levels == ("Home & Garden", "Sofas")


def test_crlf_row_ends_and_quoted_fields_with_commas_and_quotes(tmp_path):
    path = tmp_path / "Products.csv"
    path.write_bytes(
        (
            PRODUCTS_HEADER.replace("\n", "\r\n")
            + '3,p3,"Desk, ""oak"" | in Bath, Somerset | Gumtree",Office Furniture & Equipment,'
            '"Solid, heavy",£40.00,"Bath, Somerset"\r\n'
        ).encode()
    )
    listings, quarantine, rows = read_products(path)
    assert not quarantine and rows == 1
    assert listings[0].title == 'Desk, "oak"'
    assert listings[0].description == "Solid, heavy"


def test_wrong_field_count_is_quarantined_with_raw_values_and_line(tmp_path):
    lines = [product(1, "p1"), "2,p2,Broken | in Leeds | Gumtree,Home & Garden\n", product(3, "p3")]
    products, _, _ = write_export(tmp_path, lines, [])
    listings, quarantine, rows = read_products(products)
    assert [x.id for x in listings] == ["p1", "p3"]
    assert rows == 3
    (bad,) = quarantine
    assert (bad.reason, bad.line, bad.record_id) == ("wrong_field_count", 3, "p2")
    assert bad.raw == ["2", "p2", "Broken | in Leeds | Gumtree", "Home & Garden"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"price": "POA"}, "bad_price"),
        ({"category": ""}, "bad_category"),
        ({"title": " | in Leeds | Gumtree"}, "missing_title"),
        ({"pid": ""}, "missing_id"),
    ],
)
def test_bad_fields_are_quarantined_with_their_reason(tmp_path, kwargs, reason):
    kwargs.setdefault("pid", "bad")
    products, _, _ = write_export(tmp_path, [product(1, "good"), product(2, **kwargs)], [])
    listings, quarantine, rows = read_products(products)
    assert [x.id for x in listings] == ["good"] and rows == 2
    (bad,) = quarantine
    assert bad.reason == reason and bad.source == "products" and bad.line == 3
    assert bad.raw["price"] == kwargs.get("price", "£1,250.00")  # original values are kept


def test_duplicate_product_id_keeps_the_first_row(tmp_path):
    products, _, _ = write_export(tmp_path, [product(1, "p1", price="£1.00"), product(2, "p1", price="£2.00")], [])
    listings, quarantine, _ = read_products(products)
    assert [x.price for x in listings] == [1.0]
    assert [q.reason for q in quarantine] == ["duplicate_id"]


def test_missing_file_and_wrong_columns_fail_fast(tmp_path):
    with pytest.raises(ExportFormatError, match="not found.*nope.csv"):
        read_raw_csv(tmp_path / "nope.csv", ("id",), "products")
    path = tmp_path / "Products.csv"
    path.write_text(",id,title,price\n1,a,b,c\n")
    with pytest.raises(ExportFormatError, match=r"missing column\(s\) \['product_name', 'category'"):
        read_products(path)
    path.write_text("")
    with pytest.raises(ExportFormatError, match="empty"):
        read_products(path)
    path.write_bytes(PRODUCTS_HEADER.encode() + b"1,p1,\xff\xfe bad,Cat,desc,\xa320.00,Leeds\n")
    with pytest.raises(ExportFormatError, match="not UTF-8"):
        read_products(path)


def test_missing_image_folder_fails_fast(tmp_path):
    products, images, _ = write_export(tmp_path, [product(1, "p1")], [])
    with pytest.raises(ExportFormatError, match="image folder not found"):
        read_export(products, images, tmp_path / "no-such-dir")


def test_image_rows_are_matched_to_products_and_problems_reported(tmp_path):
    products, images, image_dir = write_export(
        tmp_path,
        [product(1, "p1"), product(2, "p2"), product(3, "p3", price="POA")],
        [
            "1,i1,p1,link,ref,27/02/2022\n",
            "2,i2,p1,link,ref,26/02/2022\n",
            "3,i3,ghost,link,ref,26/02/2022\n",
            "4,i4,p3,link,ref,26/02/2022\n",
            "5,i1,p1,link,ref,26/02/2022\n",
            "6,../evil,p1,link,ref,26/02/2022\n",
            "7,i7,p1,link,ref,yesterday\n",
            "8,i8,p1,link\n",
        ],
        files=["i1.jpg", "i2.jpg", "i3.jpg", "i7.jpg", "stray.jpg"],
    )
    export = read_export(products, images, image_dir)
    listings = {x.id: x for x in export.listings}
    assert listings["p1"].image_ids == ("i1", "i2", "i7")
    assert listings["p1"].created_at == datetime.date(2022, 2, 26)  # earliest create_time
    assert listings["p2"].image_ids == () and listings["p2"].created_at is None
    assert export.products_without_image_rows == ["p2"]
    assert export.warnings == {"image_bad_create_time": 1}
    reasons = {(q.source, q.record_id): q.reason for q in export.quarantine}
    assert reasons == {
        ("products", "p3"): "bad_price",
        ("images", "i3"): "unknown_product",
        ("images", "i4"): "product_quarantined",
        ("images", "i1"): "duplicate_id",
        ("images", "../evil"): "invalid_id",
        ("images", "i8"): "wrong_field_count",
        ("image_file", "stray"): "image_file_unreferenced",
    }
    assert export.image_rows == 8 and len(export.images) == 3
    # Every image row is either usable or quarantined.
    assert export.image_rows == len(export.images) + sum(q.source == "images" for q in export.quarantine)
