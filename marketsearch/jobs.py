"""End-to-end jobs: `marketsearch build` (ingest -> train -> embed -> index -> export-onnx -> re-ranker) and
`marketsearch demo`.

Each step is the same function as its own subcommand, called in order, so `build` prints what the
individual commands print and fails the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from api import cli as api_cli
from catalog import cli as catalog_cli
from core.options import DEFAULT_WORKSPACE, WorkspaceOption, open_workspace
from encoders import cli as encoders_cli
from evaluation import cli as evaluation_cli
from index import cli as index_cli
from personal import cli as personal_cli
from recommend import cli as recommend_cli

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).

ConfigOption = Annotated[
    str,
    typer.Option(
        "--config",
        help="Model architecture: default (design-card backbones when their weights can be had, else the "
        "offline ones, with a warning), design-card, offline, tiny.",
    ),
]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1, help="Maximum training epochs of the towers.")]
OfflineOption = Annotated[
    bool, typer.Option("--offline", help="Never try to download backbone weights; use the bundled offline ones.")
]
RankerOption = Annotated[
    bool, typer.Option("--ranker/--no-ranker", help="Train the LightGBM re-ranker after indexing.")
]


def run_steps(steps: list[tuple[str, Callable[[], None]]]) -> dict[str, float]:
    """Run named steps in order, printing a header per step; returns seconds per step."""
    seconds: dict[str, float] = {}
    for number, (name, step) in enumerate(steps, start=1):
        typer.secho(f"\n[{number}/{len(steps)}] {name}", bold=True)
        started = time.perf_counter()
        step()
        seconds[name] = round(time.perf_counter() - started, 1)
    typer.secho("\ndone: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()), bold=True)
    return seconds


def build_steps(
    workspace: Path,
    products: Path,
    images: Path,
    image_dir: Path,
    *,
    config: str,
    epochs: int,
    offline: bool,
    ranker: bool,
) -> list[tuple[str, Callable[[], None]]]:

    steps = [
        ("ingest", lambda: catalog_cli.ingest(products=products, images=images, image_dir=image_dir,
                                              workspace=workspace)),
        ("train", lambda: encoders_cli.train(workspace=workspace, config=config, epochs=epochs, offline=offline)),
        ("embed", lambda: encoders_cli.embed(workspace=workspace)),
        ("index", lambda: index_cli.index(workspace=workspace)),
        # the encoders' graphs for the service (loaded at start, not exported there), gated on the protocols
        ("export-onnx", lambda: evaluation_cli.export_onnx(workspace=workspace)),
    ]
    if ranker:

        def train_ranker() -> None:
            try:
                evaluation_cli.train_ranker(workspace=workspace)
            except typer.Exit as refused:  # the gate kept a model worse than the first stage out
                if refused.exit_code != evaluation_cli.GATE_REFUSED_EXIT_CODE:
                    raise
                typer.echo("continuing without a new re-ranker (see above)")

        steps.append(("train-ranker", train_ranker))
    return steps


def build(
    products: Annotated[Path, typer.Option("--products", help="The export's Products.csv.")],
    images: Annotated[Path, typer.Option("--images", help="The export's Images.csv.")],
    image_dir: Annotated[Path, typer.Option("--image-dir", help="Folder holding the photos as <image_id>.jpg.")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    config: ConfigOption = "default",
    epochs: EpochsOption = 40,
    offline: OfflineOption = False,
    ranker: RankerOption = True,
) -> None:
    """Build a searchable workspace from a raw export: ingest -> train -> embed -> index -> train-ranker.

    Every step is incremental where it can be (ingest upserts, embed encodes only new or changed
    listings, index adds/removes), so re-running after new listings arrive is cheap except training.
    """
    open_workspace(workspace)
    run_steps(build_steps(workspace, products, images, image_dir, config=config, epochs=epochs,
                          offline=offline, ranker=ranker))


DEMO_USERS = 300  # simulated buyers of the demo catalogue
DEMO_DAYS = 28


def demo(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Workspace folder for the demo catalogue and its artefacts.")
    ] = Path("workspace/demo"),
    listings: Annotated[int, typer.Option("--listings", min=13, help="Listings in the demo catalogue.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the demo catalogue.")] = 0,
    config: ConfigOption = "default",
    epochs: EpochsOption = 40,
    offline: OfflineOption = False,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Run the offline evaluation after building.")
    ] = True,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the search service at the end.")] = True,
    host: Annotated[str, typer.Option("--host", help="Address the service listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port the service listens on.")] = 8000,
) -> None:
    """The main job on the embedded default: generate the demo catalogue, build everything, evaluate, serve.

    The demo catalogue is synthetic, deterministic (by --seed) and in the marketplace's raw export format,
    so it goes through exactly the same ingest as a real export (a few rows and photos are broken on
    purpose and end up in the quarantine report).
    """
    from catalog.demo import generate_demo_export

    ws = open_workspace(workspace)
    export_dir = ws.root / "demo-export"
    steps: list[tuple[str, Callable[[], None]]] = []
    export = None

    def generate() -> None:
        nonlocal export
        export = generate_demo_export(export_dir, n_listings=listings, seed=seed)
        typer.echo(f"demo export: {json.dumps({'listings': listings, 'seed': seed})} in {export_dir}")

    steps.append(("demo-data", generate))
    products, images, image_dir = export_dir / "Products.csv", export_dir / "Images.csv", export_dir / "images"
    steps += build_steps(workspace, products, images, image_dir, config=config, epochs=epochs,
                         offline=offline, ranker=True)
    # simulated buyers (browsing only: seconds, where searching through the pipeline would take minutes)
    steps.append(("simulate", lambda: personal_cli.simulate(
        workspace=workspace, db=None, users=DEMO_USERS, days=DEMO_DAYS, seed=seed, start=None, out=None,
        search="off", hidden_state=None, max_events=5_000_000, as_json=False)))
    steps.append(("train-recs", lambda: recommend_cli.train_recs(workspace=workspace, progress=False)))
    if evaluate:

        steps.append(("evaluate", lambda: evaluation_cli.evaluate(workspace=workspace)))
        steps.append(("evaluate-recs", lambda: evaluation_cli.evaluate_recs(workspace=workspace, progress=False)))
    run_steps(steps)
    typer.echo(
        "writes (selling, events, user erasure) need an API key; reads need none: create one with "
        f"`marketsearch keys create --scope admin --workspace {workspace}` and paste it into the page's API key box"
    )
    if serve:

        typer.secho(f"\nserving http://{host}:{port}/  (API docs at /docs; Ctrl-C to stop)", bold=True)
        api_cli.serve(workspace=workspace, host=host, port=port)


def copy_catalogue(
    to: Annotated[str, typer.Option("--to", help="The target database URL (an empty database), e.g. "
                                    "postgresql+psycopg://user@host/marketsearch; no password in it (PGPASSWORD)." )],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    switch: Annotated[bool, typer.Option("--switch/--no-switch", help="Record the target as the workspace's "
                                         "catalogue (WORKSPACE/database.url) once copied.")] = True,
) -> None:
    """Copy the workspace's catalogue (listings, photos' rows, change log, users, events, keys, embeddings) into
    another database, in one transaction: e.g. move a deployment from SQLite to PostgreSQL."""
    from catalog.copy import copy_database
    from catalog.errors import CatalogError
    from encoders.embed import metadata as embeddings_metadata

    ws = open_workspace(workspace)
    if not ws.has_catalogue():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch ingest` first", err=True)
        raise typer.Exit(2)
    try:
        counts = copy_database(ws.db_url, to, [embeddings_metadata])
        if switch:
            ws.use_database(to)
    except (CatalogError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    for table, rows in counts.items():
        typer.echo(f"{table:<24} {rows} rows")
    if switch:
        typer.echo(f"the workspace {ws.root}/ now uses {to} (recorded in {ws.database_url_path})")
