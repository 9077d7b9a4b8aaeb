"""An interaction event, the rules a valid one follows, and the reasons an invalid one is rejected.

The same rules serve the HTTP API (``POST /events``), ``marketsearch events import`` and the simulator, so an
event is valid or not whatever way it arrives. Whether its listing exists is checked by the store, against
the catalogue.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EVENT_TYPES: tuple[str, ...] = ("impression", "view", "click", "save", "contact_seller", "purchase")

# User, event and query ids: 1..64 characters, letters, digits and `_ . : -`, starting with a letter or a digit
# (a UUID, a hex digest or "sim0-u000042" fit; no spaces, slashes, or "." / ".." path segments).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_ID_CHARS = 64
_ID = re.compile(ID_PATTERN)
MAX_LISTING_ID_CHARS = 64  # catalog.schema.listings.id
MAX_POSITION = 10_000

# A client's clock may run a little fast; an event later than this after its arrival is refused.
MAX_CLOCK_AHEAD = dt.timedelta(minutes=10)
EARLIEST_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)  # before it: a client bug (epoch 0, ...)

# The fields of an event, in the order files and the API list them.
FIELDS: tuple[str, ...] = (
    "event_id", "user_id", "listing_id", "type", "query_id", "position", "occurred_at", "received_at",
)  # fmt: skip

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "user_id", "listing_id", "type", "occurred_at")

# Every reason an event can be rejected for, with what it means (the API and the import report use these codes).
_ID_RULE = "1..64 characters of letters, digits and _ . : - starting with a letter or digit"
REASONS: dict[str, str] = {
    "invalid_event_id": f"event_id must be {_ID_RULE}",
    "invalid_user_id": f"user_id must be {_ID_RULE}",
    "invalid_query_id": f"query_id, when given, must be {_ID_RULE}",
    "invalid_listing_id": "listing_id must be 1..64 characters without control characters",
    "unknown_listing": "no listing with this id in the catalogue",
    "unknown_type": f"type must be one of {', '.join(EVENT_TYPES)}",
    "invalid_position": f"position, when given, is an integer from 1 to {MAX_POSITION:,}",
    "time_in_future": f"occurred_at is more than {MAX_CLOCK_AHEAD.seconds // 60} minutes after the event was received "
    "(or an imported received_at is that far ahead of now)",
    "time_too_old": f"occurred_at is before {EARLIEST_TIME:%Y-%m-%d}",
    # only in files (the API's request schema catches these before the events are looked at)
    "missing_field": "a required field is missing or empty",
    "unknown_field": "the record has a field that events do not have",
    "bad_time": "a time is not an ISO 8601 date-time",
    "bad_record": "the line is not a JSON object (JSONL) or the row does not match the header (CSV)",
}  # fmt: skip


@dataclass(frozen=True)
class Event:
    """One thing a user did with a listing. Times are timezone-aware UTC."""

    event_id: str
    user_id: str
    listing_id: str
    type: str
    occurred_at: dt.datetime
    query_id: str | None = None
    position: int | None = None
    received_at: dt.datetime | None = None  # set by whoever stores the event when not given

    def to_record(self) -> dict[str, Any]:
        """JSON-friendly fields in ``FIELDS`` order (times as ISO 8601 with ``Z``)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "listing_id": self.listing_id,
            "type": self.type,
            "query_id": self.query_id,
            "position": self.position,
            "occurred_at": format_time(self.occurred_at),
            "received_at": format_time(self.received_at) if self.received_at else None,
        }


@dataclass(frozen=True)
class Rejection:
    """Why the event at ``index`` (of a batch, or the line of a file) was not stored."""

    index: int
    event_id: str | None
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}; known: {sorted(REASONS)}")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


def as_utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; a time without an offset is taken to be UTC. OverflowError when the offset moves it past
    the representable years."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def format_time(value: dt.datetime) -> str:
    return as_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def problem(event: Event, now: dt.datetime) -> tuple[str, str] | None:
    """(reason, detail) of the first rule ``event`` breaks, or None when it is valid (the listing's existence
    aside). ``now`` (aware) is when it arrives; an event that carries its own ``received_at`` (an import) is
    judged against that, which itself may not be in the future."""
    if not is_valid_id(event.event_id):
        return "invalid_event_id", f"event_id {_shown(event.event_id)}: {REASONS['invalid_event_id']}"
    if not is_valid_id(event.user_id):
        return "invalid_user_id", f"user_id {_shown(event.user_id)}: {REASONS['invalid_user_id']}"
    listing_id = event.listing_id
    if not (
        isinstance(listing_id, str)
        and 0 < len(listing_id) <= MAX_LISTING_ID_CHARS
        and listing_id.isprintable()
        and listing_id.strip() == listing_id
    ):
        return "invalid_listing_id", f"listing_id {_shown(listing_id)}: {REASONS['invalid_listing_id']}"
    if event.type not in EVENT_TYPES:
        return "unknown_type", f"type {_shown(event.type)}: {REASONS['unknown_type']}"
    if event.query_id is not None and not is_valid_id(event.query_id):
        return "invalid_query_id", f"query_id {_shown(event.query_id)}: {REASONS['invalid_query_id']}"
    if event.position is not None and not (
        isinstance(event.position, int) and not isinstance(event.position, bool) and 1 <= event.position <= MAX_POSITION
    ):
        return "invalid_position", f"position {_shown(event.position)}: {REASONS['invalid_position']}"
    try:
        occurred = as_utc(event.occurred_at)
        received = as_utc(event.received_at) if event.received_at is not None else now
    except OverflowError:  # 9999-12-31T23:00-05:00 or 0001-01-01T00:00+01:00
        early = min(event.occurred_at.year, (event.received_at or now).year) < EARLIEST_TIME.year
        reason = "time_too_old" if early else "time_in_future"
        return reason, "a time is outside the representable years once converted to UTC"
    for name, time, reference in (("received_at", received, now), ("occurred_at", occurred, received)):
        if time > reference + MAX_CLOCK_AHEAD:
            return "time_in_future", (
                f"{name} {format_time(time)} is {_duration(time - reference)} after "
                f"{'now' if reference is now else 'received_at'} ({format_time(reference)}); "
                f"at most {MAX_CLOCK_AHEAD.seconds // 60} minutes of clock skew is taken"
            )
    if occurred < EARLIEST_TIME:
        return "time_too_old", f"occurred_at {format_time(occurred)}: {REASONS['time_too_old']}"
    return None


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 date-time (``Z`` or an offset; none means UTC) as aware UTC; ValueError otherwise."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        return as_utc(value)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the representable years") from None


def event_from_record(record: Mapping[str, Any], index: int) -> Event | Rejection:
    """An ``Event`` from a file's record (CSV: every value a string, empty for none; JSONL: JSON values), or
    the reason it cannot be one. Field values are then checked by ``problem``."""
    event_id = record.get("event_id")
    shown_id = event_id if isinstance(event_id, str) and event_id else None
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        return Rejection(index, shown_id, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}")

    def value(name: str):
        raw = record.get(name)
        return None if raw is None or raw == "" else raw

    for name in REQUIRED_FIELDS:
        if value(name) is None:
            return Rejection(index, shown_id, "missing_field", f"{name} is missing or empty")
    for name in ("event_id", "user_id", "listing_id", "type", "query_id"):
        if value(name) is not None and not isinstance(value(name), str):
            reason = "unknown_type" if name == "type" else f"invalid_{name}"
            return Rejection(index, shown_id, reason, f"{name} must be a string, got {_shown(value(name))}")
    position = value("position")
    if isinstance(position, str):
        if not re.fullmatch(r"[0-9]{1,6}", position.strip()):
            return Rejection(index, shown_id, "invalid_position", f"position {_shown(position)} is not an integer")
        position = int(position)
    elif position is not None and (isinstance(position, bool) or not isinstance(position, int)):
        return Rejection(index, shown_id, "invalid_position", f"position {_shown(position)} is not an integer")
    times = {}
    for name in ("occurred_at", "received_at"):
        raw = value(name)
        if raw is None:
            times[name] = None
            continue
        try:
            if not isinstance(raw, str):
                raise ValueError
            times[name] = parse_time(raw)
        except ValueError:
            return Rejection(index, shown_id, "bad_time", f"{name} {_shown(raw)} is not an ISO 8601 date-time")
    return Event(
        event_id=value("event_id"),
        user_id=value("user_id"),
        listing_id=value("listing_id"),
        type=value("type"),
        occurred_at=times["occurred_at"],
        query_id=value("query_id"),
        position=position,
        received_at=times["received_at"],
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _duration(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:,.0f} days"
