"""`marketsearch serve`: run the API and the web page with uvicorn."""

from __future__ import annotations

import errno
import os
import socket
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

    # Claim the port before the seconds of imports and the model and index loading (up to a minute on a busy
    # machine), so a port in use fails at once; uvicorn would bind only after the app's start-up.
    try:
        listener = listening_socket(host, port)
    except OSError as error:
        typer.secho(f"error: {cannot_listen(host, port, error)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None

    import uvicorn

    typer.echo(f"serving {workspace} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    if workers == 1:
        from api.config import Settings
        from api.main import create_app

        server = uvicorn.Server(
            uvicorn.Config(create_app(Settings(workspace=workspace)), host=host, port=port, log_level=log_level)
        )
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it shut down on, as uvicorn.run expects
            pass
        if not server.started:  # the app's start-up failed (uvicorn has logged why)
            raise typer.Exit(3)
        return
    # uvicorn's supervisor binds the port again in this process, before it starts the workers (who load the
    # app): the check above still holds, and the port is free again for a few microseconds only.
    listener.close()
    # Worker processes import the app themselves (this supervisor does not: torch, FAISS and LightGBM would cost
    # it 1.1 GB of memory for nothing): hand them the workspace through the settings' env var.
    os.environ["MARKETSEARCH_WORKSPACE"] = str(workspace)
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, as uvicorn opens one (``SO_REUSEADDR``: a restart
    does not wait for the previous run's connections to time out). It listens at once: on Linux a socket that
    is only bound does not keep a second ``SO_REUSEADDR`` bind to the same port out. Raises ``OSError``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"{host}:{port} is already in use (another `marketsearch serve`?): stop the process that listens "
            f"there, or serve on another port with --port"
        )
    return f"cannot listen on {host}:{port} ({error.strerror or error})"


keys_app = typer.Typer(
    name="keys",
    help="API keys for the write routes (listings, events, user erasure); reads need none.",
    no_args_is_help=True,
)

ScopeOption = Annotated[
    str,
    typer.Option(
        "--scope",
        help="listings:write (create and change listings), events:write (POST /events) or admin (everything, "
        "DELETE /users/{id} included).",
    ),
]


@keys_app.command("create")
def create_key(
    scope: ScopeOption,
    seller: Annotated[
        str | None, typer.Option("--seller", help="The seller this key acts for: it may change only its listings.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A note saying who or what holds the key.")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Create a key and print it once: only its hash is stored, so it cannot be shown again."""
    from catalog.api_keys import SCOPES
    from catalog.api_keys import create_key as create

    if scope not in SCOPES:
        typer.echo(f"error: unknown scope {scope!r}; use one of {', '.join(SCOPES)}", err=True)
        raise typer.Exit(2)
    catalog = _open_catalog(workspace)
    try:
        key, text = create(catalog, scope, seller_id=seller, name=name)
    finally:
        catalog.close()
    typer.echo(text)
    seller_note = f", seller {key.seller_id}" if key.seller_id else ""
    typer.echo(
        f"key {key.id} ({key.scope}{seller_note}) created; it is shown only now: send it as "
        "`Authorization: Bearer <key>` (or `X-API-Key: <key>`)",
        err=True,
    )


@keys_app.command("list")
def list_keys(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """The keys (id, scope, seller, name, created, revoked), never their secrets."""
    from catalog.api_keys import list_keys as listed

    catalog = _open_catalog(workspace)
    try:
        keys = listed(catalog)
    finally:
        catalog.close()
    if not keys:
        typer.echo("no keys; create one with `marketsearch keys create --scope listings:write`")
        return
    typer.echo(f"{'id':<12}  {'scope':<14}  {'seller':<16}  {'created (UTC)':<19}  {'revoked (UTC)':<19}  name")
    for key in keys:
        revoked = f"{key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "-"
        typer.echo(
            f"{key.id:<12}  {key.scope:<14}  {key.seller_id or '-':<16}  {key.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{revoked:<19}  {key.name or ''}"
        )


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`; the part after `ms_`).")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Revoke a key: every server process refuses it from its next request on."""
    from catalog.api_keys import revoke_key as revoke

    catalog = _open_catalog(workspace)
    try:
        revoked = revoke(catalog, key_id)
    finally:
        catalog.close()
    if not revoked:
        typer.echo(f"error: no active key {key_id!r} (see `marketsearch keys list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {key_id} revoked")


def _open_catalog(workspace):
    from catalog.store import Catalog
    from core.workspace import Workspace

    ws = Workspace.at(workspace)
    if not ws.db_path.is_file():
        typer.echo(f"error: no catalogue at {ws.db_path}; build one first (`marketsearch build` or `ingest`)", err=True)
        raise typer.Exit(2)
    return Catalog(ws.db_url, root=ws.root)
