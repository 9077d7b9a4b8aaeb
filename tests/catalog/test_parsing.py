import datetime

import pytest

from catalog.parsing import (
    CategoryError,
    DateError,
    PriceError,
    TitleError,
    normalise_text,
    parse_category_path,
    parse_export_date,
    parse_location,
    parse_price,
    strip_title_suffix,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("£1,250.00", 1250.0),
        ("£20.00", 20.0),
        ("£0.00", 0.0),
        ("£12,345,678.50", 12345678.5),
        ("£7.5", 7.5),
        ("  £5 ", 5.0),
        ("1250", 1250.0),
        ("GBP 99.99", 99.99),
        ("Free", 0.0),
        ("FREE", 0.0),
    ],
)
def test_parse_price_accepts_gbp_amounts_and_free(raw, expected):
    assert parse_price(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["", "POA", "£12.5O", "$10", "-£5", "£1,25", "£ offers", "10-20", "£1.234"])
def test_parse_price_rejects_everything_else(raw):
    with pytest.raises(PriceError) as info:
        parse_price(raw)
    assert info.value.reason == "bad_price"


def test_parse_price_error_names_the_value_and_the_expected_form():
    with pytest.raises(PriceError, match=r"'POA'.*£1,250.00"):
        parse_price("POA")


def test_parse_category_path_splits_levels():
    levels = parse_category_path("Home & Garden / Garden & Patio / Outdoor Settings & Furniture")
    assert levels == ("Home & Garden", "Garden & Patio", "Outdoor Settings & Furniture")
    assert parse_category_path("  Appliances ") == ("Appliances",)
    # Commas inside a level are part of the level, not separators.
    assert parse_category_path("Music, Films, Books & Games / Music")[0] == "Music, Films, Books & Games"
    # A slash without spaces is part of a level (as in the real export).
    assert parse_category_path("Phones / Radio Equipment / Ham/Amateur Radios")[-1] == "Ham/Amateur Radios"


@pytest.mark.parametrize("raw", ["", "   ", "Home & Garden / ", " / Sofas", "A // B", "/Sofas", "A /"])
def test_parse_category_path_rejects_empty_levels(raw):
    with pytest.raises(CategoryError):
        parse_category_path(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Inverness, Highland", ("Inverness", "Highland")),
        ("Delph,Manchester", ("Delph", "Manchester")),
        ("London", ("London", None)),
        ("County Antrim", (None, "County Antrim")),
        ("Gloucestershire", (None, "Gloucestershire")),
        ("Newport, Isle of Wight, England", ("Newport, Isle of Wight", "England")),
        ("", (None, None)),
    ],
)
def test_parse_location(raw, expected):
    assert parse_location(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Sun loungers | in Skegness, Lincolnshire | Gumtree", "Sun loungers"),
        ("Red bike | kids | in London | Gumtree", "Red bike | kids"),
        ("Sofa\r for sale  | in Delph, Manchester | Gumtree", "Sofa for sale"),
        ("No suffix at all", "No suffix at all"),
        ("Desk | Gumtree", "Desk"),
    ],
)
def test_strip_title_suffix(raw, expected):
    assert strip_title_suffix(raw) == expected


def test_strip_title_suffix_rejects_an_empty_title():
    with pytest.raises(TitleError):
        strip_title_suffix(" | in London | Gumtree")


def test_normalise_text_turns_cr_and_whitespace_runs_into_single_spaces():
    assert normalise_text("Line one\rLine two\r\n\tthree\u00a0 four\u200b ") == "Line one Line two three four"
    assert normalise_text(None) == ""


def test_parse_export_date_is_day_first():
    assert parse_export_date("03/02/2022") == datetime.date(2022, 2, 3)
    with pytest.raises(DateError):
        parse_export_date("2022-02-03")
    with pytest.raises(DateError):
        parse_export_date("31/02/2022")
