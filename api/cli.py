"""`marketsearch serve`: run the API and the web page with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).


def serve(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 to accept other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes, each with its own copy of the model and indexes (memory x N). "
            "More than one lets Python-side work of concurrent requests use more cores.",
        ),
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: debug, info, warning, error.")] = "info",
) -> None:
    """Serve the search API (OpenAPI docs at /docs) and the web page at / for one workspace.

    Without --workspace (and $MARKETSEARCH_HOME), ./workspace is served when it holds a catalogue, else
    ./workspace/demo, what `make demo` builds.
    """
    from core.workspace import built_workspace

    try:
        workspace, note = built_workspace(workspace)
    except FileNotFoundError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if note:
        typer.echo(note)

    import uvicorn

    from api.config import Settings
    from api.main import create_app

    typer.echo(f"serving {workspace} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    if workers == 1:
        uvicorn.run(create_app(Settings(workspace=workspace)), host=host, port=port, log_level=log_level)
        return
    # Worker processes import the app themselves: hand them the workspace through the settings' env var.
    os.environ["MARKETSEARCH_WORKSPACE"] = str(workspace)
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)
