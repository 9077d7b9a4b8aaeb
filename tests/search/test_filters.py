import numpy as np
import pytest

from ranking.types import ListingTable
from search.filters import FilterMasks, SearchFilters


def make_table() -> ListingTable:
    return ListingTable(
        ids=["a", "b", "c", "d", "e"],
        titles=["red bike", "sofa", "drill", "blue bike", "lamp"],
        categories=[
            "Sports, Leisure & Travel / Bicycles",
            "Home & Garden / Sofas",
            "DIY Tools & Materials / Power Tools",
            "Sports, Leisure & Travel / Bicycles / Road",
            "Home & Garden / Lighting",
        ],
        top_category_index=np.array([0, 1, 2, 0, 1]),
        price=np.array([120.0, 300.0, np.nan, 80.0, 0.0], dtype=np.float32),
        category_median_price=np.array([100.0, 150.0, np.nan, 100.0, 150.0], dtype=np.float32),
        towns=["Leeds", "York", "Leeds", "Bath", "Hull"],
        counties=["West Yorkshire", "North Yorkshire", "West Yorkshire", "Somerset", "East Riding"],
        photo_count=np.array([2, 1, 0, 3, 1], dtype=np.int32),
        description_length=np.array([10, 20, 30, 40, 50], dtype=np.int32),
        created_days=np.array([19000, 19010, np.nan, 19020, 19030], dtype=np.float32),
    )


def matching(filters: SearchFilters) -> list[str]:
    table = make_table()
    return [table.ids[i] for i in np.flatnonzero(FilterMasks(table).mask(filters))]


def test_no_filter_keeps_everything():
    assert matching(SearchFilters()) == ["a", "b", "c", "d", "e"]
    assert not SearchFilters().active


def test_category_matches_top_level_and_path_prefix_case_insensitively():
    assert matching(SearchFilters(category="sports, leisure & travel")) == ["a", "d"]
    assert matching(SearchFilters(category="Sports, Leisure & Travel / Bicycles / Road")) == ["d"]
    # A prefix must end on a level boundary: "Home" is not "Home & Garden".
    assert matching(SearchFilters(category="Home")) == []


def test_price_range_is_inclusive_and_excludes_unknown_prices():
    assert matching(SearchFilters(min_price=80, max_price=120)) == ["a", "d"]
    assert matching(SearchFilters(max_price=0)) == ["e"]
    assert "c" not in matching(SearchFilters(min_price=0))


def test_location_matches_town_or_county():
    assert matching(SearchFilters(location="leeds")) == ["a", "c"]
    assert matching(SearchFilters(location="  North   Yorkshire ")) == ["b"]


def test_filters_combine_with_and():
    assert matching(SearchFilters(category="Home & Garden", max_price=100, location="Hull")) == ["e"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_price": 10, "max_price": 5}, "above max_price"),
        ({"min_price": -1}, "non-negative"),
        ({"max_price": float("nan")}, "non-negative"),
    ],
)
def test_invalid_price_filters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchFilters(**kwargs)
