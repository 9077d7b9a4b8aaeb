"""`marketsearch ingest`, `marketsearch demo-data` and `marketsearch catalog stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption, open_workspace

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).

catalog_app = typer.Typer(name="catalog", help="Inspect the catalogue database, or copy it into another.",
                          no_args_is_help=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL or SQLite file path (default: the workspace's catalogue: $MARKETSEARCH_DATABASE_URL, "
        "else the URL in WORKSPACE/database.url, else WORKSPACE/catalog.db). Any SQLAlchemy URL works, e.g. "
        "postgresql+psycopg://user@host/marketsearch; `ingest --db URL` records it for every later command.",
    ),
]


def ingest(
    products: Annotated[
        Path, typer.Option("--products", help="The export's Products.csv (unnamed index, id, product_name, ...).")
    ],
    images: Annotated[
        Path, typer.Option("--images", help="The export's Images.csv (unnamed index, id, product_id, ...).")
    ],
    image_dir: Annotated[Path, typer.Option("--image-dir", help="Folder holding the photos as <image_id>.jpg.")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    db: DbOption = None,
    image_size: Annotated[
        int, typer.Option("--image-size", min=16, max=4096, help="Side of the cleaned square photos, in pixels.")
    ] = 256,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Listings written per database transaction.")
    ] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a summary.")] = False,
) -> None:
    """Ingest a raw marketplace export: clean rows, verify and resize photos, upsert into the catalogue.

    Re-running is safe (upsert by id; photos already cleaned are skipped). Rejected rows and files go to
    WORKSPACE/quarantine/latest.csv with a reason each; the summary lists the counts.
    """
    from catalog.export import ExportFormatError
    from catalog.ingest import ingest_export
    from catalog.store import to_db_url

    ws = open_workspace(workspace)
    if db is not None and to_db_url(db) != ws.db_url:
        try:
            ws.use_database(to_db_url(db))  # embed, index, serve ... then find the same catalogue
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        report = ingest_export(products, images, image_dir, ws, image_size=image_size, batch_size=batch_size)
    except ExportFormatError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        typer.echo("\n".join(report.summary_lines()))


def demo_data(
    out: Annotated[Path, typer.Option("--out", help="Folder to write Products.csv, Images.csv and images/ into.")],
    listings: Annotated[
        int, typer.Option("--listings", min=13, max=100_000, help="Number of good listings to generate.")
    ] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")] = 0,
) -> None:
    """Generate the synthetic demo catalogue in the marketplace's raw export format.

    Deterministic by seed. A few rows and photos are broken on purpose, to exercise the quarantine.
    """
    from catalog.demo import MANIFEST_NAME, generate_demo_export

    export = generate_demo_export(out, n_listings=listings, seed=seed)
    expected = json.loads((out / MANIFEST_NAME).read_text())["expected"]
    typer.echo(f"wrote {export.products_csv}, {export.images_csv} and {export.image_dir}/")
    typer.echo(
        f"expected after ingest: {expected['listings']} listings, {expected['images']} images, "
        f"{sum(expected['quarantined'].values())} quarantined"
    )
    typer.echo(
        f"next: marketsearch ingest --products {export.products_csv} --images {export.images_csv} "
        f"--image-dir {export.image_dir}"
    )


@catalog_app.command("stats")
def stats(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Counts of the catalogue: listings, images, text-only listings, prices, listings per category."""
    from catalog.store import Catalog
    from core.workspace import Workspace

    ws = Workspace.at(workspace)
    if db is None and not ws.has_catalogue():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch ingest` first", err=True)
        raise typer.Exit(2)
    with Catalog(db or ws.db_url, root=ws.root) as catalog:
        numbers = catalog.stats()
    if as_json:
        typer.echo(json.dumps(numbers, indent=2))
        return
    for key, value in numbers.items():
        if key != "per_category":
            typer.echo(f"{key:<14} {value}")
    typer.echo("per_category")
    for name, count in numbers["per_category"].items():
        typer.echo(f"  {name:<36} {count}")
