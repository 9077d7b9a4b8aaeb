"""`marketsearch serve`: run the API and the web page with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from marketsearch.options import DEFAULT_WORKSPACE, WorkspaceOption


def serve(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 to accept other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: debug, info, warning, error.")] = "info",
) -> None:
    """Serve the search API (OpenAPI docs at /docs) and the web page at / for one workspace."""
    import uvicorn

    from api.config import Settings
    from api.main import create_app

    settings = Settings(workspace=workspace)
    typer.echo(f"serving {workspace} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
