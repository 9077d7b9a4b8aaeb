"""Reading the change log exactly when sequence numbers can commit out of order.

On SQLite one writer at a time allocates a seq and commits, so the log becomes visible in seq order and "the
changes past the newest seq I read" is exact. On PostgreSQL a sequence hands out numbers before commit:
transaction A takes seq 10, transaction B takes seq 11 and commits first, and a reader that saw 11 and moved
its position past it would never read 10. Two facts make it exact again:

- `LogHead`: the log's newest seq read together with the write transactions in flight at that moment
  (``pg_current_snapshot()``; every change-log writer holds a transaction id before it takes a seq,
  `catalog.store.record_changes`). Once all of them have finished, every seq up to ``seq`` is either visible
  or was rolled back: the head is *settled*.
- `LogCursor`: a reader's position as ``settled`` (every change up to it has been read) plus the seqs past
  it already read. Each poll re-reads only the holes between them (the seqs it has not seen yet), so a
  change that commits late is read when it appears, and the position moves on once a head has settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PENDING_HEADS = 64  # heads waiting to settle; dropping the oldest only delays settling, never loses a change


@dataclass(frozen=True)
class LogHead:
    """The newest change-log seq and the ids of the write transactions in flight when it was read (always
    empty on SQLite)."""

    seq: int
    in_flight: frozenset[int] = frozenset()


@dataclass
class LogCursor:
    """Where a reader of the change log stands: every change with seq <= ``settled`` has been read (or never
    committed), and ``read`` holds the seqs past it read already."""

    settled: int
    read: set[int] = field(default_factory=set)
    pending: list[LogHead] = field(default_factory=list)
    last_head: LogHead | None = None

    @property
    def high(self) -> int:
        """The newest seq read."""
        return max(self.read, default=self.settled)

    def holes(self) -> list[int]:
        """Seqs between ``settled`` and ``high`` not read yet: in flight, rolled back, or committed late."""
        return [seq for seq in range(self.settled + 1, self.high) if seq not in self.read]

    def fetch(self, catalog, limit: int) -> tuple[LogHead, list[tuple[int, str, str]]]:
        """The log head (read first) and the rows not read yet: the holes that have committed since, then
        the rows past ``high``, oldest first, at most ``limit`` of those. Pass both to `advance` once the rows
        are applied."""
        head = catalog.log_head()
        holes = self.holes()
        late = catalog.changes_in(holes) if holes else []
        return head, late + catalog.changes_since(self.high, limit=limit)

    def advance(self, head: LogHead, rows: list[tuple[int, str, str]]) -> None:
        """Record ``rows`` (from `fetch` with ``head``) as read and move ``settled`` as far as is exact."""
        self.read.update(row[0] for row in rows)
        self.last_head = head
        # A head read earlier has settled when none of its writers is still in flight at ``head``; ``head``
        # was read before these rows, so every seq up to it that committed at all was visible to this read.
        # (``head`` itself settles only when nothing was in flight.)
        heads = [*self.pending, head]
        settled = [h.seq for h in heads if not h.in_flight & head.in_flight]
        if settled:
            self.settled = max(self.settled, min(max(settled), self.high))
        self.read = {seq for seq in self.read if seq > self.settled}
        self.pending = [h for h in heads if h.seq > self.settled and h.in_flight & head.in_flight]
        del self.pending[:-MAX_PENDING_HEADS]

    def rebase(self, checkpoint: int, replayed: list[int]) -> None:
        """A new index set holds every change up to ``checkpoint`` (a settled head); ``replayed``: the seqs past
        it that were applied again on top of the set."""
        self.settled = max(self.settled, checkpoint)
        self.read = {seq for seq in (*self.read, *replayed) if seq > self.settled}
        self.pending = [h for h in self.pending if h.seq > self.settled]
