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
    if db is None and not ws.has_catalogue():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch ingest` first", err=True)
        raise typer.Exit(2)
    catalog = Catalog(db or ws.db_url, root=ws.root)
    return ws, catalog, EventStore(catalog)


def _shown(url: str) -> str:
    """A database URL as people may see it: the file of an SQLite URL, a server URL without its password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or url
    return parsed.render_as_string(hide_password=True)


def _require_event_file_format(path: Path) -> None:
    """Exit 2 with one line unless ``path`` names an event file format we write (.csv or .jsonl)."""
    from personal.event_files import EventFileError, file_format

    try:
        file_format(path)
    except EventFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


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
    from personal.event_files import export_events

    _require_event_file_format(file)
    _, catalog, store = _open_store(workspace, db)
    try:
        written = export_events(store, file)
    finally:
        store.close()
        catalog.close()
    typer.echo(f"wrote {written:,} events to {file}")


def simulate(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    db: DbOption = None,
    users: Annotated[int, typer.Option("--users", min=1, max=1_000_000, help="Simulated users.")] = 1000,
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="Length of the simulated period.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same events.")] = 0,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="First day of the period, YYYY-MM-DD (UTC). Default: the day after the newest listing's created_at "
            "(2024-01-01 when no listing has one).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the events to this .csv or .jsonl file instead of the database."),
    ] = None,
    search: Annotated[
        str,
        typer.Option(
            "--search",
            help="auto: search through the real pipeline when the workspace has a model and indexes, else browse "
            "categories only; pipeline: require it; off: browse only.",
        ),
    ] = "auto",
    hidden_state: Annotated[
        Path | None,
        typer.Option(
            "--hidden-state", help="Also write the hidden tastes and listing appeal here (JSON, for diagnostics)."
        ),
    ] = None,
    max_events: Annotated[
        int, typer.Option("--max-events", min=1, help="Stop once this many events are generated.")
    ] = 5_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Simulate buyers on the catalogue and write their interaction events (seeded, bounded).

    Users with hidden tastes (a few categories, a price band, a home town, several interests) arrive over the
    period and come back in sessions that search (through the real pipeline when the workspace has one) or
    browse a category, look at pages of 20 with position-biased clicks, and save, contact sellers and buy;
    bought listings leave. Events go into the catalogue database (the checks of POST /events) or to --out.
    """
    import datetime as dt

    from core.files import write_json_atomic
    from personal.event_files import open_event_file
    from personal.sim_world import SimCatalog
    from personal.simulator import SimConfig, Simulator, store_events

    if search not in ("auto", "pipeline", "off"):
        typer.echo(f"error: --search must be auto, pipeline or off, not {search!r}", err=True)
        raise typer.Exit(2)
    if out is not None:
        _require_event_file_format(out)
    ws, catalog, store = _open_store(workspace, db)
    try:
        sim_catalog = SimCatalog.from_listings(listing for batch in catalog.iter_listings() for listing in batch)
        if not len(sim_catalog):
            typer.echo("error: the catalogue has no listings; run `marketsearch ingest` first", err=True)
            raise typer.Exit(2)
        first = _start_day(start, sim_catalog)
        end = first + dt.timedelta(days=days)
        if end > dt.datetime.now(dt.timezone.utc):
            typer.echo(f"error: the period would end on {end:%Y-%m-%d}, in the future; pass an earlier --start",
                       err=True)  # fmt: skip
            raise typer.Exit(2)
        search_function = _search_function(ws, search)
        config = SimConfig(users=users, days=days, seed=seed, start=first, max_events=max_events)
        simulator = Simulator(sim_catalog, config, search=search_function)
        destination = str(out) if out else _shown(db or ws.db_url)
        typer.echo(
            f"simulating {users:,} users over {days} days from {first:%Y-%m-%d} on {len(sim_catalog):,} listings "
            f"({'searching through the pipeline and browsing' if search_function else 'browsing categories only'}) "
            f"into {destination}"
        )
        stored = None
        if out is not None:
            with open_event_file(out) as writer:
                for events in simulator.run(progress=True):
                    writer.write(events)
        else:
            stored = store_events(store, simulator.run(progress=True))
        if hidden_state is not None:
            write_json_atomic(hidden_state, simulator.hidden_state())
    finally:
        store.close()
        catalog.close()
    report = simulator.report
    summary = {
        "users": report.users,
        "sessions": report.sessions,
        "searches": report.searches,
        "distinct_searches_run": len(search_function.cache) if search_function else 0,
        "browses": report.browses,
        "events": report.total_events,
        "by_type": dict(report.events.most_common()),
        "listings_sold": report.sold,
        "listings_appearing_during_the_period": report.released_during,
        "truncated_at_max_events": report.truncated,
        "seconds": round(report.seconds, 1),
        "events_per_second": round(report.total_events / report.seconds) if report.seconds else None,
        "destination": destination,
    }
    if stored is not None:
        summary |= {"stored": stored.stored, "duplicates": stored.duplicates, "rejected": dict(stored.rejected)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        typer.echo(f"{key:<38} {value}")
    if stored is not None and stored.rejected:
        typer.echo("warning: some simulated events were rejected (a simulator bug); see `rejected`", err=True)


def _start_day(start: str | None, sim_catalog):
    import datetime as dt

    import numpy as np

    from personal.simulator import DEFAULT_START

    if start is not None:
        try:
            day = dt.date.fromisoformat(start)
        except ValueError:
            typer.echo(f"error: --start {start!r} is not a date (YYYY-MM-DD)", err=True)
            raise typer.Exit(2) from None
    elif np.isfinite(sim_catalog.created).any():
        day = dt.date.fromordinal(int(np.nanmax(sim_catalog.created)) + 719163 + 1)
    else:
        return DEFAULT_START
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def _search_function(ws, mode: str):
    """The real pipeline as the simulated users' search, or None (browse only)."""
    if mode == "off":
        return None
    if mode == "auto" and not (ws.model_dir.is_dir() and ws.index_dir.is_dir()):
        typer.echo(f"no model or index in {ws.root}; the users browse categories only")
        return None  # without importing the pipeline (torch, FAISS: seconds and a GB for nothing)
    import faiss
    import torch

    from personal.simulator import PipelineSearch
    from ranking.feature_log import FeatureLogger
    from search.pipeline import Searcher

    # One query at a time: a thread pool per model call costs more than it saves (as in the service, whose
    # setting this is: 360 ms per demo query with torch's default threads at load 4-5, 49 ms with one).
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        # the features of every search are logged (WORKSPACE/logs/features/), keyed by the query id its
        # events carry: the personalised search ranker learns from that join (`marketsearch train-recs`)
        searcher = Searcher.from_workspace(ws, feature_logger=FeatureLogger.for_workspace(ws))
    except Exception as exc:  # noqa: BLE001 -- any missing or broken artefact: say so, browse instead
        if mode == "pipeline":
            typer.echo(f"error: --search pipeline, but the search pipeline does not load: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"no search pipeline in {ws.root} ({type(exc).__name__}); the users browse categories only")
        return None
    return PipelineSearch(searcher)
