"""A user's interaction history: read it page by page, or erase it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from api.auth import AdminKey
from api.deps import EventStoreDep, StateDep
from api.event_schemas import EventOut, UserErasureResponse, UserEventsResponse
from api.schemas import error_responses
from personal.erasure import erase_user
from personal.events import ID_PATTERN
from personal.store import MAX_PAGE

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[
    str, Path(pattern=ID_PATTERN, max_length=64, description="The user's id (as the events carry it).")
]
# A page boundary: microseconds since 1970 (UTC) of the last event shown, and its id.
CURSOR_PATTERN = r"^[0-9]{1,16}_[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def encode_cursor(before: tuple[dt.datetime, str]) -> str:
    return f"{(before[0] - _EPOCH) // _MICROSECOND}_{before[1]}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    micros, event_id = cursor.split("_", 1)
    return _EPOCH + int(micros) * _MICROSECOND, event_id


@router.get("/{user_id}/events", responses=error_responses(422, 503))
async def user_events(
    user_id: UserId,
    store: EventStoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Events per page (1..{MAX_PAGE}).")] = 100,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page.")
    ] = None,
) -> UserEventsResponse:
    """The user's events, newest first, a page at a time. A user without events (or unknown) has none."""
    before = decode_cursor(cursor) if cursor else None
    page = await run_in_threadpool(store.user_events, user_id, limit=limit, before=before)
    return UserEventsResponse(
        user_id=user_id,
        count=len(page.events),
        events=[EventOut(**item.__dict__) for item in page.events],
        next_cursor=encode_cursor(page.next_before) if page.next_before else None,
    )


@router.delete("/{user_id}", responses=error_responses(401, 403, 422, 503))
async def delete_user(user_id: UserId, store: EventStoreDep, state: StateDep, key: AdminKey) -> UserErasureResponse:
    """Erase the user (API key with scope `admin`): every event, the user's row, and what was derived from their
    history.

    Erasing a user who has nothing stored is not an error (`erased_events: 0`, `erased_user: false`).
    """
    derived = [state.recommender] if state.recommender is not None else []
    erasure = await run_in_threadpool(erase_user, store, user_id, derived)
    return UserErasureResponse(
        user_id=user_id, erased_events=erasure.events, erased_user=erasure.user, derived=erasure.derived
    )
