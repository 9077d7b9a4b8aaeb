"""`marketsearch events import|export` and `marketsearch simulate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in SQLAlchemy, numpy or the search pipeline.

events_app = typer.Typer(
    name="events", help="Import or export users' interaction events (CSV or JSONL).", no_args_is_help=True
)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL or SQLite file path (default: WORKSPACE/catalog.db)."),
]


def _open_store(workspace: Path, db: str | None):
    from catalog.store import Catalog
    from core.workspace import Workspace
    from personal.store import EventStore

    ws = Workspace.at(workspace)
    if db is None and not ws.db_path.is_file():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch ingest` first", err=True)
        raise typer.Exit(2)
    catalog = Catalog(db or ws.db_url, root=ws.root)
    return ws, catalog, EventStore(catalog)


@events_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="Events as .csv (header row) or .jsonl, the fields of the event API.")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    db: DbOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1000, help="Events per transaction.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a summary.")] = False,
) -> None:
    """Store the events of a file, with the checks of POST /events; importing a file twice stores it once.

    Rejected rows go to WORKSPACE/quarantine/events-import-latest.csv with their line and reason. A row
    without received_at is stamped with the import time.
    """
    from personal.event_files import EventFileError, import_events

    if not file.is_file():
        typer.echo(f"error: no file {file}", err=True)
        raise typer.Exit(2)
    ws, catalog, store = _open_store(workspace, db)
    try:
        report = import_events(store, file, reject_dir=ws.quarantine_dir, batch_size=batch_size)
    except EventFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
        catalog.close()
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.summary_lines()))


@events_app.command("export")
def export_file(
    file: Annotated[Path, typer.Argument(help="Where to write: .csv or .jsonl (replaced once complete).")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    db: DbOption = None,
) -> None:
    """Write every stored event, oldest first, as CSV or JSONL (the fields `events import` reads)."""
    from personal.event_files import EventFileError, export_events, file_format

    try:
        file_format(file)
    except EventFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _, catalog, store = _open_store(workspace, db)
    try:
        written = export_events(store, file)
    finally:
        store.close()
        catalog.close()
    typer.echo(f"wrote {written:,} events to {file}")
