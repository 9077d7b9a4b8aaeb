import csv
import hashlib
import io
import re

import pytest

from catalog.demo import generate_demo_export
from catalog.demo_vocab import CATEGORIES, COLOURS
from catalog.export import read_export

REAL_TOP_CATEGORIES = {
    "Appliances", "Baby & Kids Stuff", "Clothes, Footwear & Accessories", "Computers & Software",
    "DIY Tools & Materials", "Health & Beauty", "Home & Garden", "Music, Films, Books & Games",
    "Office Furniture & Equipment", "Other Goods", "Phones, Mobile Phones & Telecoms",
    "Sports, Leisure & Travel", "Video Games & Consoles",
}  # fmt: skip


def digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_demo_export(tmp_path / "a", n_listings=20, seed=7, progress=False)
    generate_demo_export(tmp_path / "b", n_listings=20, seed=7, progress=False)
    c = generate_demo_export(tmp_path / "c", n_listings=20, seed=8, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert a.products_csv.read_bytes() != c.products_csv.read_bytes()
    assert set(digest(tmp_path / "a")) != set(digest(tmp_path / "c"))  # other ids, other image files


def test_regenerating_into_the_same_folder_replaces_the_images(tmp_path):
    generate_demo_export(tmp_path, n_listings=30, seed=1, progress=False)
    first = digest(tmp_path)
    generate_demo_export(tmp_path, n_listings=20, seed=2, progress=False)
    generate_demo_export(tmp_path, n_listings=30, seed=1, progress=False)
    assert digest(tmp_path) == first


def test_refuses_a_folder_with_foreign_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not written by demo-data"):
        generate_demo_export(tmp_path, n_listings=20, progress=False)
    with pytest.raises(ValueError, match="n_listings"):
        generate_demo_export(tmp_path / "x", n_listings=5, progress=False)


def test_demo_uses_the_real_raw_format(demo_export):
    raw = demo_export.products_csv.read_bytes().decode("utf-8")
    assert raw.startswith(",id,product_name,category,product_description,price,location\n")
    assert "\r\n" not in raw and "\r" in raw  # LF row ends, bare CRs inside fields
    rows = list(csv.reader(io.StringIO(raw.replace("\r", "\x00"), newline="")))[1:]
    cr_unquoted = [r for r in rows if len(r) == 7 and "\x00" in r[4] and "," not in r[4]]
    assert cr_unquoted, "expected a description with a bare CR and no quoting"
    assert all(re.search(r" \| in [^|]+ \| Gumtree$", r[2]) for r in rows if len(r) == 7)
    assert any(re.fullmatch(r"£\d{1,3}(,\d{3})+\.\d\d", r[5]) for r in rows if len(r) == 7)
    assert any(r[5] == "Free" for r in rows if len(r) == 7) or any(r[5] == "£0.00" for r in rows if len(r) == 7)
    indices = [int(r[0]) for r in rows]
    assert len(set(indices)) == len(indices)
    images = demo_export.images_csv.read_text().splitlines()
    assert images[0] == ",id,product_id,bucket_link,image_ref,create_time"
    assert re.fullmatch(r"\d+,[0-9a-f-]{36},[0-9a-f-]{36},https://\S+\.jpg,\w{16},\d\d/\d\d/\d{4}", images[1])


def test_demo_covers_the_real_categories_with_sub_categories_and_colour_words(demo_export):
    export = read_export(demo_export.products_csv, demo_export.images_csv, demo_export.image_dir)
    assert {c.name for c in CATEGORIES} == REAL_TOP_CATEGORIES
    assert {x.top_category for x in export.listings} == REAL_TOP_CATEGORIES
    assert all(len(x.category_levels) >= 2 for x in export.listings)
    titled = [x for x in export.listings if any(c in x.title.lower().split() for c in COLOURS)]
    assert len(titled) > 0.7 * len(export.listings)
    assert max(len(x.image_ids) for x in export.listings) <= 4


def test_text_predicts_the_category_well_above_chance(demo_export):
    import numpy as np

    export = read_export(demo_export.products_csv, demo_export.images_csv, demo_export.image_dir)
    tokens = [re.findall(r"[a-z0-9]+", x.text.lower()) for x in export.listings]
    labels = [x.top_category for x in export.listings]
    vocab = {w: i for i, w in enumerate(sorted({w for t in tokens[:100] for w in t}))}
    counts = np.zeros((len(tokens), len(vocab)), dtype=np.float32)
    for row, words in enumerate(tokens):
        for w in words:
            if w in vocab:
                counts[row, vocab[w]] += 1
    document_frequency = (counts[:100] > 0).sum(0)
    counts *= np.log(100 / np.maximum(document_frequency, 1))  # idf: ignore words every listing has
    counts /= np.linalg.norm(counts, axis=1, keepdims=True) + 1e-9
    classes = sorted(set(labels[:100]))
    centroids = np.stack([counts[:100][[lab == c for lab in labels[:100]]].mean(0) for c in classes])
    predicted = [classes[i] for i in (counts[100:] @ centroids.T).argmax(1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels[100:])])
    assert accuracy > 0.5  # nearest centroid on tf-idf; chance is 1/13


def test_photo_colour_matches_the_colour_word(demo_workspace):
    import numpy as np
    from PIL import Image

    from catalog.store import Catalog

    catalog = Catalog(demo_workspace.db_url)
    names = sorted(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    hits = total = 0
    for listing in [x for batch in catalog.iter_listings() for x in batch]:
        words = set(listing.title.lower().split())
        colour = next((c for c in names if c in words), None)
        if colour is None or not listing.image_ids:
            continue
        with Image.open(catalog.image_path(listing.image_ids[0])) as photo:
            pixels = np.asarray(photo.reduce(8), dtype=np.float32).reshape(-1, 3)
        nearest = np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
        votes = np.bincount(nearest, minlength=len(names))
        # The drawn colour is among the three most common palette colours of the photo.
        hits += names.index(colour) in np.argsort(votes)[-3:]
        total += 1
    assert total > 50 and hits / total > 0.6
