import uuid
from collections import Counter

import pytest

from catalog.split import assign_split

IDS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(5000)]


def test_assignment_is_deterministic_and_covers_every_id_once():
    first = assign_split(IDS, seed=3)
    second = assign_split(list(reversed(IDS)), seed=3)
    assert first == second
    assert set(first) == set(IDS)
    assert set(first.values()) == {"train", "val", "test"}


def test_fractions_are_respected_approximately():
    counts = Counter(assign_split(IDS, seed=0, val_fraction=0.1, test_fraction=0.2).values())
    assert counts["test"] / len(IDS) == pytest.approx(0.2, abs=0.025)
    assert counts["val"] / len(IDS) == pytest.approx(0.1, abs=0.02)


def test_growing_catalogue_keeps_old_assignments():
    old = assign_split(IDS[:1000], seed=0)
    new = assign_split(IDS, seed=0)
    assert all(new[i] == old[i] for i in old)


def test_different_seeds_give_different_splits():
    a, b = assign_split(IDS, seed=0), assign_split(IDS, seed=1)
    assert sum(a[i] != b[i] for i in IDS) > 500


def test_product_level_split_keeps_each_listings_photos_together(demo_workspace):
    from catalog.store import Catalog

    catalog = Catalog(demo_workspace.db_url)
    listings = [x for batch in catalog.iter_listings() for x in batch]
    splits = assign_split([x.id for x in listings], seed=0)
    image_sides: dict[str, set[str]] = {}
    for listing in listings:
        for image_id in listing.image_ids:
            image_sides.setdefault(image_id, set()).add(splits[listing.id])
    assert image_sides and all(len(sides) == 1 for sides in image_sides.values())


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.1, 1.0), (0.5, 0.5)])
def test_bad_fractions_are_rejected(val, test):
    with pytest.raises(ValueError):
        assign_split(IDS[:10], val_fraction=val, test_fraction=test)
