"""Erasing a user: their events and users row, and whatever was derived from them.

``erase_user`` is the one place a user is forgotten (``DELETE /users/{id}`` calls it). Derived state (user
profiles, matrix-factorisation factors, co-visitation counts: the recommenders of issue #12) joins by being
passed in ``derived``: anything with a ``name`` and a ``forget(user_id) -> int`` that drops what it holds of
the user and says how many items that was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from personal.store import EventStore


class ForgetsUsers(Protocol):
    name: str

    def forget(self, user_id: str) -> int: ...


@dataclass
class Erasure:
    user_id: str
    events: int  # events erased from the database
    user: bool  # whether the users row existed
    derived: dict[str, int] = field(default_factory=dict)  # name -> items forgotten by each derived state


def erase_user(store: EventStore, user_id: str, derived: Iterable[ForgetsUsers] = ()) -> Erasure:
    """Erase the user's history from the database, then from every derived state."""
    deletion = store.delete_user(user_id)
    return Erasure(
        user_id=user_id,
        events=deletion.events,
        user=deletion.user,
        derived={state.name: state.forget(user_id) for state in derived},
    )
