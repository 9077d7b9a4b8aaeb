"""`POST /events`: a batch of interaction events from a client (the web page, an app, an importer)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from api.auth import EventsKey
from api.deps import EventStoreDep, RateLimitsDep
from api.event_schemas import MAX_BATCH, EventBatch, EventBatchResponse, EventRejection
from api.schemas import error_responses
from personal.events import Event

router = APIRouter(prefix="/events", tags=["events"])

_RESPONSES = error_responses(
    401,
    403,
    413,
    422,
    429,
    503,
    descriptions={
        413: f"More than {MAX_BATCH:,} events, or a body over the events body limit.",
        422: "The batch is not a JSON object of well-typed events (the detail says where); invalid event values "
        "are reported per event in a 200 instead.",
    },
)


@router.post("", responses=_RESPONSES)
async def post_events(
    batch: EventBatch, store: EventStoreDep, key: EventsKey, limits: RateLimitsDep
) -> EventBatchResponse:
    """Store a batch of events (API key with scope `events:write`): answered once they are committed.

    Idempotent by `event_id`: a retried batch stores nothing twice and counts the repeats as `duplicates`.
    An invalid event (malformed id, unknown type or listing, a time far in the future) is listed in `rejected`
    with its index and reason, and the valid ones are stored.
    """
    limits.check("events", key.id)
    if len(batch.events) > MAX_BATCH:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the batch has {len(batch.events):,} events; send at most {MAX_BATCH:,} per request",
        )
    events = [
        Event(
            event_id=item.event_id,
            user_id=item.user_id,
            listing_id=item.listing_id,
            type=item.type,
            occurred_at=item.occurred_at,
            query_id=item.query_id,
            position=item.position,
        )
        for item in batch.events
    ]
    report = await run_in_threadpool(store.record, events)
    return EventBatchResponse(
        received=report.received,
        stored=report.stored,
        duplicates=report.duplicates,
        rejected=[EventRejection(index=r.index, event_id=r.event_id, reason=r.reason, detail=r.detail)
                  for r in report.rejected],
    )
