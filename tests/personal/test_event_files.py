"""Event files: import with every rejected row reported, idempotent re-import, export round trip, the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from catalog.store import Catalog
from core.workspace import Workspace
from marketsearch.cli import app
from personal.event_files import EventFileError, export_events, import_events
from personal.events import Event
from personal.store import EventStore
from tests.catalog.test_store import make_listing

NOW = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def _workspace(root) -> Workspace:
    ws = Workspace.at(root).ensure()
    with Catalog(ws.db_path) as catalog:
        catalog.upsert_listings([make_listing(f"L{i}") for i in range(1, 4)])
    return ws


@pytest.fixture
def workspace(tmp_path):
    return _workspace(tmp_path / "ws")


@pytest.fixture
def store(workspace):
    catalog = Catalog(workspace.db_path)
    with EventStore(catalog) as store:
        yield store
    catalog.close()


def good(n: int, **extra) -> dict:
    return {"event_id": f"e{n}", "user_id": "u1", "listing_id": "L1", "type": "view",
            "occurred_at": f"2024-02-0{1 + n % 9}T10:00:0{n % 10}Z", **extra}  # fmt: skip


def test_a_jsonl_import_stores_the_good_rows_and_reports_every_other_one(store, workspace, tmp_path):
    lines = [
        json.dumps(good(1)),
        "{not json",
        json.dumps([1, 2]),
        "",  # a blank line is no row
        json.dumps({k: v for k, v in good(4).items() if k != "user_id"}),
        json.dumps(good(5, occurred_at="last tuesday")),
        json.dumps(good(6, colour="red")),
        json.dumps(good(7, listing_id="L404")),
        json.dumps(good(8, occurred_at="2999-01-01T00:00:00Z")),
        json.dumps(good(9, position="2")),  # a string in JSONL is read like a CSV value: still an integer
        json.dumps(good(10, position=2.5)),
        json.dumps(good(1)),  # the same event again: a duplicate, not a rejection
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = import_events(store, path, reject_dir=workspace.quarantine_dir, now=NOW, progress=False)
    assert (report.rows, report.stored, report.duplicates) == (11, 2, 1)
    assert report.rows == report.stored + report.duplicates + len(report.rejected)  # nothing silently dropped
    assert [(r.line, r.reason) for r in report.rejected] == [
        (2, "bad_record"),
        (3, "bad_record"),
        (5, "missing_field"),
        (6, "bad_time"),
        (7, "unknown_field"),
        (8, "unknown_listing"),
        (9, "time_in_future"),
        (11, "invalid_position"),
    ]
    with open(workspace.quarantine_dir / "events-import-latest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["line"]), r["reason"]) for r in rows] == [(r.line, r.reason) for r in report.rejected]
    assert json.loads(rows[5]["raw"])["listing_id"] == "L404"
    stored = {e.event_id: e for e in store.user_events("u1").events}
    assert set(stored) == {"e1", "e9"} and stored["e9"].position == 2
    assert stored["e1"].received_at == NOW  # no received_at in the file: stamped at import

    again = import_events(store, path, now=NOW, progress=False)
    assert (again.stored, again.duplicates) == (0, 3)


def test_export_then_import_gives_the_same_events_in_csv_and_jsonl(store, tmp_path):
    events = [
        Event("a", "u1", "L1", "impression", NOW - dt.timedelta(hours=3), query_id="q1", position=4),
        Event("b", "u2", "L2", "contact_seller", NOW - dt.timedelta(hours=2, microseconds=5)),
        Event("c", "u1", "L3", "purchase", NOW - dt.timedelta(hours=1), received_at=NOW - dt.timedelta(minutes=50)),
    ]
    assert store.record(events, now=NOW).stored == 3
    for name in ("log.csv", "log.jsonl"):
        path = tmp_path / name
        assert export_events(store, path, batch_size=2, progress=False) == 3
        other = _workspace(tmp_path / f"other-{name}")
        catalog = Catalog(other.db_path)
        with EventStore(catalog) as copy:
            report = import_events(copy, path, progress=False)
            assert (report.stored, report.rejected) == (3, [])
            assert _all(copy) == _all(store)
        catalog.close()
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert header == "event_id,user_id,listing_id,type,query_id,position,occurred_at,received_at"


def test_a_csv_with_a_foreign_header_is_refused_and_a_short_row_is_reported(store, tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,user,item\n1,u1,L1\n")
    with pytest.raises(EventFileError, match="header"):
        import_events(store, wrong, progress=False)
    with pytest.raises(EventFileError, match="unknown event file format"):
        import_events(store, tmp_path / "log.parquet", progress=False)
    short = tmp_path / "short.csv"
    short.write_text("event_id,user_id,listing_id,type,occurred_at\ne1,u1,L1,view,2024-02-01T10:00:00Z\ne2,u1\n")
    report = import_events(store, short, progress=False, now=NOW)
    assert report.stored == 1 and [(r.line, r.reason) for r in report.rejected] == [(3, "bad_record")]


def test_the_cli_imports_and_exports(workspace, tmp_path):
    runner = CliRunner()
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(good(1)) + "\n" + json.dumps(good(2, type="like")) + "\n")
    result = runner.invoke(app, ["events", "import", str(path), "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "2 rows, 1 events stored, 0 duplicates (already stored), 1 rejected" in result.output
    assert "unknown_type" in result.output and "events-import-" in result.output

    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["events", "export", str(out), "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 events" in result.output
    assert out.read_text().splitlines()[1].startswith("e1,u1,L1,view,,,2024-02-02T10:00:01")

    result = runner.invoke(app, ["events", "export", str(tmp_path / "out.txt"), "-w", str(workspace.root)])
    assert result.exit_code == 2 and "unknown event file format" in result.output
    result = runner.invoke(app, ["events", "import", str(path), "-w", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no catalogue" in result.output


def _all(store: EventStore) -> list[Event]:
    return [e for batch in store.iter_events() for e in batch]
