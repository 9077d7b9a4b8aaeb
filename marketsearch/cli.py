"""The `marketsearch` command line: one typer app, subcommands owned by each package's cli module."""

from __future__ import annotations

import logging
import warnings

import typer
from typer.core import TyperGroup

from api import cli as api_cli
from catalog import cli as catalog_cli
from catalog.errors import CatalogError
from encoders import cli as encoders_cli
from evaluation import cli as evaluation_cli
from index import cli as index_cli
from marketsearch import jobs
from personal import cli as personal_cli
from recommend import cli as recommend_cli


class Commands(TyperGroup):
    """The subcommands, with the failures a person fixes by hand (not a bug in the code) said in one line
    instead of a traceback: a catalogue database that cannot be used."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CatalogError as error:
            typer.secho(
                f"error: {error}; move it aside (or restore a backup) and ingest the export again "
                "(`marketsearch ingest` or `marketsearch build`)",
                err=True,
                fg=typer.colors.RED,
            )
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    name="marketsearch",
    help="Multi-modal search and ranking for a second-hand marketplace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


# Third-party loggers whose INFO lines read as failures to a newcomer (FAISS's loader logs every
# ModuleNotFoundError of the optional SIMD builds it tries before the one that loads). Shown with -v.
QUIET_LOGGERS = {"faiss.loader": logging.WARNING}
# Known-benign warnings of the libraries' own code, hidden unless -v: numba's cast warning while it
# compiles ranx's metrics, and scipy's t-test on identical per-query scores (ranx's p-value is then NaN,
# which the report turns into 1.0).
QUIET_WARNINGS = (
    (r"unsafe cast from uint64 to int64", r".*ranx"),
    (r"Precision loss occurred in moment calculation", r".*scipy"),
)


def configure_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr, without the third-party noise listed above unless ``verbose``.

    Without ``verbose`` the handler itself drops DEBUG records: bm25s sets its own logger to DEBUG when it
    is imported, after this runs, so a level on the root logger alone would not hide its lines.
    """
    root = logging.getLogger()
    ours = not root.handlers  # basicConfig adds a handler only when none is there (tests, embedding apps)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        return
    if ours:
        for handler in root.handlers:
            handler.setLevel(logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    """Multi-modal search and ranking for a second-hand marketplace.

    Every command works on one workspace folder (--workspace, or $MARKETSEARCH_HOME, default ./workspace;
    `serve` falls back to ./workspace/demo, what `make demo` builds) that holds the catalogue database,
    cleaned images, models and indexes.
    """
    configure_logging(verbose)


# Commands in the order of the pipeline; each lives in the package that owns it.
app.command("demo")(jobs.demo)
app.command("build")(jobs.build)
app.command("demo-data")(catalog_cli.demo_data)
app.command("ingest")(catalog_cli.ingest)
catalog_cli.catalog_app.command("copy")(jobs.copy_catalogue)  # a job: it copies the embeddings' tables too
app.add_typer(catalog_cli.catalog_app, name="catalog")
app.command("train")(encoders_cli.train)
app.command("embed")(encoders_cli.embed)
app.command("index")(index_cli.index)
app.command("train-ranker")(evaluation_cli.train_ranker)
app.command("evaluate")(evaluation_cli.evaluate)
app.command("export-onnx")(evaluation_cli.export_onnx)
app.command("serve")(api_cli.serve)
app.add_typer(api_cli.keys_app, name="keys")
app.add_typer(personal_cli.events_app, name="events")
app.command("simulate")(personal_cli.simulate)
app.command("train-recs")(recommend_cli.train_recs)
app.command("evaluate-recs")(evaluation_cli.evaluate_recs)


if __name__ == "__main__":  # `python -m marketsearch.cli ...` as well as the `marketsearch` script
    app()
