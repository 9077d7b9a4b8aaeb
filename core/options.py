"""Command-line options shared by every subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.files import remove_stale_temporaries
from core.workspace import DEFAULT_ROOT, DEFAULT_ROOT_ENV, Workspace

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar=DEFAULT_ROOT_ENV,
        help="Workspace folder holding the catalogue database, images, models and indexes.",
        show_default=True,
    ),
]
DEFAULT_WORKSPACE = DEFAULT_ROOT  # `serve` falls back to workspace/demo (core.workspace.built_workspace)


def open_workspace(path: Path) -> Workspace:
    """The workspace a command works on, created if missing, without what interrupted runs left behind."""
    workspace = Workspace.at(path).ensure()
    remove_stale_temporaries(workspace.temporary_folders())
    return workspace
