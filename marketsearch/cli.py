"""The `marketsearch` command line: one typer app, subcommands owned by each package's cli module."""

from __future__ import annotations

import logging

import typer

from api import cli as api_cli
from catalog import cli as catalog_cli
from encoders import cli as encoders_cli
from evaluation import cli as evaluation_cli
from index import cli as index_cli
from marketsearch import jobs

app = typer.Typer(
    name="marketsearch",
    help="Multi-modal search and ranking for a second-hand marketplace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
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


# Commands in the order of the pipeline; each lives in the package that owns it.
app.command("demo")(jobs.demo)
app.command("build")(jobs.build)
app.command("demo-data")(catalog_cli.demo_data)
app.command("ingest")(catalog_cli.ingest)
app.add_typer(catalog_cli.catalog_app, name="catalog")
app.command("train")(encoders_cli.train)
app.command("embed")(encoders_cli.embed)
app.command("index")(index_cli.index)
app.command("train-ranker")(evaluation_cli.train_ranker)
app.command("evaluate")(evaluation_cli.evaluate)
app.command("serve")(api_cli.serve)
