"""The `marketsearch` command line: one typer app, subcommands owned by each package's cli module."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="marketsearch",
    help="Multi-modal search and ranking for a second-hand marketplace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    """Multi-modal search and ranking for a second-hand marketplace.

    Every command works on one workspace folder (--workspace, or $MARKETSEARCH_HOME, default ./workspace)
    that holds the catalogue database, cleaned images, models and indexes.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# Each package registers its own commands here (one line each).
from api import cli as api_cli  # noqa: E402, I001
app.command("serve")(api_cli.serve)
from catalog import cli as catalog_cli  # noqa: E402
app.command("ingest")(catalog_cli.ingest)
app.command("demo-data")(catalog_cli.demo_data)
app.add_typer(catalog_cli.catalog_app, name="catalog")
from encoders import cli as encoders_cli  # noqa: E402
app.command("train")(encoders_cli.train)
app.command("embed")(encoders_cli.embed)
from ranking import cli as ranking_cli  # noqa: E402
app.command("train-ranker")(ranking_cli.train_ranker)
app.command("evaluate")(ranking_cli.evaluate)
from index import cli as index_cli  # noqa: E402
app.command("index")(index_cli.index)
