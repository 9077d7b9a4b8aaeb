"""Event logs as files: CSV or JSONL (by extension), the fields of ``personal.events.FIELDS``, one event per
row or line. ``import_events`` stores a file through the same checks as ``POST /events`` and reports every
rejected row with its line and reason; ``export_events`` streams the whole log to a file."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from core.files import write_atomic
from personal.events import FIELDS, REQUIRED_FIELDS, Event, Rejection, event_from_record
from personal.store import EventStore

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REJECT_COLUMNS = ("line", "event_id", "reason", "detail", "raw")


class EventFileError(ValueError):
    """The file cannot be read as an event log at all (unknown extension, a CSV without the event header)."""


def file_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise EventFileError(f"{path}: unknown event file format {suffix!r}; use .csv or .jsonl (or .ndjson)")
    return FORMATS[suffix]


@dataclass(frozen=True)
class FileRejection:
    """A row that was not stored: its 1-based line, the reason (``personal.events.REASONS``) and the raw row."""

    line: int
    event_id: str | None
    reason: str
    detail: str
    raw: Any


@dataclass
class ImportReport:
    path: str
    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: list[FileRejection] = field(default_factory=list)
    reject_report: str | None = None  # where the rejected rows were written

    def by_reason(self) -> dict[str, int]:
        counts = Counter(r.reason for r in self.rejected)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.path}: {self.rows:,} rows, {self.stored:,} events stored, {self.duplicates:,} duplicates "
            f"(already stored), {len(self.rejected):,} rejected"
        ]
        lines += [f"  {reason:<20} {count:,}" for reason, count in self.by_reason().items()]
        if self.reject_report:
            lines.append(f"rejected rows, with their line and reason: {self.reject_report}")
        return lines

    def to_dict(self) -> dict:
        return {
            "path": self.path, "rows": self.rows, "stored": self.stored, "duplicates": self.duplicates,
            "rejected": len(self.rejected), "rejected_by_reason": self.by_reason(), "reject_report": self.reject_report,
        }  # fmt: skip


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line, record, problem) per row: ``record`` is a dict of the row's fields, or None with ``problem``
    saying why the row is not one (a JSONL line that is not a JSON object, a CSV row of the wrong width)."""
    kind = file_format(path)
    with open(path, encoding="utf-8", newline="") as handle:
        if kind == "jsonl":
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_number, None, f"not JSON ({exc.msg} at column {exc.colno})"
                    continue
                if isinstance(record, dict):
                    yield line_number, record, None
                else:
                    yield line_number, None, f"a JSON {type(record).__name__}, not an object"
            return
        reader = csv.reader(handle)
        header = next(reader, None)
        unknown = sorted(set(header or ()) - set(FIELDS))
        missing = [name for name in REQUIRED_FIELDS if name not in (header or ())]
        if header is None or unknown or missing or len(set(header)) != len(header):
            found = f"found {','.join(header)}" if header else "the file is empty"
            raise EventFileError(
                f"{path}: the first row must be a header of distinct event fields, with at least "
                f"{','.join(REQUIRED_FIELDS)} (all fields: {','.join(FIELDS)}); {found}"
            )
        for row in reader:
            line_number = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                yield line_number, None, f"{len(row)} fields, the header has {len(header)}"
                continue
            yield line_number, dict(zip(header, row, strict=True)), None


def import_events(
    store: EventStore,
    path: str | os.PathLike,
    *,
    reject_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
    now: dt.datetime | None = None,
    progress: bool = True,
) -> ImportReport:
    """Store every valid event of the file (idempotent: importing a file twice stores it once); rejected rows
    go to ``reject_dir/events-import-<timestamp>.csv`` (and ``events-import-latest.csv``) when given."""
    report = ImportReport(path=str(path))
    pending: list[tuple[int, dict, Event]] = []

    def flush() -> None:
        if not pending:
            return
        result = store.record([item for _, _, item in pending], now=now)
        report.stored += result.stored
        report.duplicates += result.duplicates
        for rejection in result.rejected:
            line, raw, _ = pending[rejection.index]
            report.rejected.append(FileRejection(line, rejection.event_id, rejection.reason, rejection.detail, raw))
        pending.clear()

    for line, record, problem in tqdm(read_records(path), desc="import events", unit=" rows", disable=not progress):
        report.rows += 1
        if record is None:
            report.rejected.append(FileRejection(line, None, "bad_record", problem, None))
            continue
        parsed = event_from_record(record, line)
        if isinstance(parsed, Rejection):
            report.rejected.append(FileRejection(line, parsed.event_id, parsed.reason, parsed.detail, record))
            continue
        pending.append((line, record, parsed))
        if len(pending) >= batch_size:
            flush()
    flush()
    report.rejected.sort(key=lambda r: r.line)
    if reject_dir is not None:
        report.reject_report = str(write_reject_report(report.rejected, reject_dir))
    return report


def write_reject_report(rejected: Iterable[FileRejection], reject_dir: str | os.PathLike) -> Path:
    """``events-import-<timestamp>.csv`` and ``events-import-latest.csv``, written even when empty so the
    latest report always describes the latest import."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REJECT_COLUMNS)
    for r in rejected:
        raw = json.dumps(r.raw, ensure_ascii=False, default=str) if r.raw is not None else ""
        writer.writerow([r.line, r.event_id or "", r.reason, r.detail, raw])
    text = buffer.getvalue()
    reject_dir = Path(reject_dir)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = reject_dir / f"events-import-{stamp}.csv"
    for target in (path, reject_dir / "events-import-latest.csv"):
        write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


class EventWriter:
    """Writes events to an open text file as CSV (a header first) or JSONL."""

    def __init__(self, handle: TextIO, kind: str):
        self.kind = kind
        self.handle = handle
        self.count = 0
        self._csv = csv.writer(handle, lineterminator="\n") if kind == "csv" else None
        if self._csv is not None:
            self._csv.writerow(FIELDS)

    def write(self, events: Iterable[Event]) -> None:
        for item in events:
            record = item.to_record()
            if self._csv is not None:
                self._csv.writerow(["" if record[name] is None else record[name] for name in FIELDS])
            else:
                self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.count += 1


@contextmanager
def open_event_file(path: str | os.PathLike) -> Iterator[EventWriter]:
    """An ``EventWriter`` on ``path`` (format by extension). It writes a temporary file beside ``path`` and
    moves it into place only once the block completes: an interrupted export leaves no half file."""
    kind = file_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield EventWriter(handle, kind)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_events(store: EventStore, path: str | os.PathLike, *, batch_size: int = 1000, progress: bool = True) -> int:
    """Stream every event, oldest first, to ``path``; the number written."""
    bar = tqdm(total=store.count(), desc="export events", unit=" events", disable=not progress)
    with open_event_file(path) as writer, bar:
        for batch in store.iter_events(batch_size=batch_size):
            writer.write(batch)
            bar.update(len(batch))
    return writer.count
