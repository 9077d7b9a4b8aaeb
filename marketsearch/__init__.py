"""The application: the typer CLI that gathers every package's commands, and the end-to-end jobs."""

__version__ = "0.1.0"
