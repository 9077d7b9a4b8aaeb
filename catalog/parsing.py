"""Pure parsers for one raw export field each. Each returns a clean value or raises a `FieldError`
subclass whose `reason` is the quarantine reason code."""

from __future__ import annotations

import datetime
import re
import unicodedata


class FieldError(ValueError):
    """A raw field that cannot be cleaned. `reason` is a short code used in the quarantine report; `column`
    names the field once `catalog.export.clean_product_fields` has met it."""

    reason = "bad_field"
    column: str | None = None


class PriceError(FieldError):
    reason = "bad_price"


class CategoryError(FieldError):
    reason = "bad_category"


class TitleError(FieldError):
    reason = "missing_title"


class DateError(FieldError):
    reason = "bad_date"


_WHITESPACE = re.compile(r"\s+")
# Zero-width and byte-order characters that survive copy-paste from listing sites.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)


def normalise_text(text: str) -> str:
    """NFC-normalise, turn CR/LF/tabs and runs of whitespace into single spaces, trim."""
    if text is None:
        return ""
    text = unicodedata.normalize("NFC", str(text)).translate(_INVISIBLE)
    return _WHITESPACE.sub(" ", text).strip()


_FREE_WORDS = {"free", "free!", "£free", "freebie", "0", "£0"}
_PRICE = re.compile(r"^(?:GBP|£)?\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?$", re.IGNORECASE)


def parse_price(raw: str) -> float:
    """GBP price from the export: '£1,250.00' -> 1250.0, 'Free' -> 0.0.

    Raises PriceError for anything else (other currencies, ranges, words, negative numbers)."""
    text = normalise_text(raw)
    if not text:
        raise PriceError("empty price; expected a GBP amount such as '£1,250.00' or 'Free'")
    if text.lower() in _FREE_WORDS:
        return 0.0
    match = _PRICE.match(text.replace(" ", ""))
    if match is None:
        raise PriceError(f"unparseable price {raw!r}; expected a GBP amount such as '£1,250.00' or 'Free'")
    whole, pence = match.groups()
    return float(whole.replace(",", "")) + (float(f"0.{pence}") if pence else 0.0)


CATEGORY_SEPARATOR = " / "
# Levels are separated by a slash with a space on at least one side: "Ham/Amateur Radios" is one level.
_LEVEL_SEPARATOR = re.compile(r"\s+/\s*|\s*/\s+|^/|/$")


def parse_category_path(raw: str) -> tuple[str, ...]:
    """'Home & Garden / Garden & Patio / Outdoor' -> ('Home & Garden', 'Garden & Patio', 'Outdoor').

    A slash without spaces stays inside its level ('Radio Equipment / Ham/Amateur Radios').
    The first level is the class label. Raises CategoryError for an empty path or an empty level."""
    text = normalise_text(raw)
    if not text:
        raise CategoryError("empty category; expected a path such as 'Home & Garden / Garden & Patio'")
    levels = tuple(normalise_text(part) for part in _LEVEL_SEPARATOR.split(text))
    if any(not level for level in levels):
        raise CategoryError(f"category path {raw!r} has an empty level; expected 'Top / Sub / ...'")
    return levels


def format_category_path(levels: tuple[str, ...]) -> str:
    return CATEGORY_SEPARATOR.join(levels)


_COUNTY_HINT = re.compile(r"^County\s|shire$|^(?:Angus|Fife|Moray|Kent|Essex|Surrey|Devon|Cornwall)$", re.I)


def parse_location(raw: str) -> tuple[str | None, str | None]:
    """'Inverness, Highland' -> ('Inverness', 'Highland').

    A single name is a town ('London' -> ('London', None)) unless it is plainly a county
    ('County Antrim', 'Gloucestershire' -> (None, name)). Empty -> (None, None). With more than one comma
    the last part is the county and the rest the town."""
    text = normalise_text(raw)
    if not text:
        return None, None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1:
        name = parts[0]
        return (None, name) if _COUNTY_HINT.search(name) else (name, None)
    return ", ".join(parts[:-1]), parts[-1]


_TITLE_SUFFIX = re.compile(r"\s*\|\s*in\s+[^|]*\|\s*Gumtree\s*$", re.IGNORECASE)
_SITE_SUFFIX = re.compile(r"\s*\|\s*Gumtree\s*$", re.IGNORECASE)


def strip_title_suffix(raw: str) -> str:
    """'Sun loungers | in Skegness, Lincolnshire | Gumtree' -> 'Sun loungers'.

    Raises TitleError when nothing is left."""
    text = normalise_text(raw)
    title = _SITE_SUFFIX.sub("", _TITLE_SUFFIX.sub("", text)).strip()
    if not title:
        raise TitleError(f"empty product title in {raw!r}")
    return title


def parse_export_date(raw: str) -> datetime.date:
    """'26/02/2022' (dd/mm/yyyy, as in Images.csv) -> date(2022, 2, 26). Raises DateError otherwise."""
    text = normalise_text(raw)
    try:
        return datetime.datetime.strptime(text, "%d/%m/%Y").date()
    except ValueError:
        raise DateError(f"unparseable date {raw!r}; expected dd/mm/yyyy such as '26/02/2022'") from None
