"""Run a `marketsearch` command in a child process and kill it with SIGKILL at a chosen point.

The child runs `marketsearch.cli.app`, the object the `marketsearch` script calls, with the given arguments.
Children are forked from a multiprocessing forkserver that imported the commands' libraries once (torch,
FAISS, LightGBM, transformers: 12-35 s per fresh interpreter on the shared 2-core machine), so a kill
cycle costs the command's own work only. The fault injection lives here, in the child, and nowhere in
the production code:

- ``KillAtEvent(n)``: the child counts the calls that change the workspace (``os.replace``/``rename``/
  ``unlink``/``rmdir``/``mkdir``/``link``, ``open`` for writing, ``faiss.write_index``, LightGBM
  ``save_model`` under the ``-w`` folder; every SQL statement other than a read, every commit) and SIGKILLs
  itself just before the n-th. Between two such calls nothing in the workspace changes, so this reaches
  every state a kill at any instant can leave, except the inside of one write call; ``n`` larger than the
  run's count lets it finish.
- ``KillBefore(targets)``: SIGKILL itself when one of the named functions (``"module:Class.method"``) is
  called; targets the code does not have are skipped.

Reproduce one by hand (the wrapper script is this module)::

    .venv/bin/python -m tests.reliability.crash_runner --kill-at-event 40 -- index --rebuild -w WS
    .venv/bin/python -m tests.reliability.crash_runner --kill-before index.bm25:BM25Index.save -- index -w WS
"""

from __future__ import annotations

import argparse
import builtins
import functools
import importlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

# Imported once by the forkserver, so every child starts with them loaded.
PRELOAD = [
    "tests.reliability.crash_runner",
    "marketsearch.cli",
    "api.main",  # what `marketsearch serve` imports (serve_runner's servers)
    "uvicorn",
    "torch",
    "faiss",
    "lightgbm",
    "bm25s",
    "sqlalchemy",
    "transformers",
    "transformers.models.bert.modeling_bert",  # the test models' text backbone (MiniLM), imported lazily at load
    "catalog.ingest",
    "encoders.bundle",
    "encoders.embed",
    "index.update",
    "search.pipeline",
    "evaluation.train",
    "evaluation.protocol",
    "ranx",
    "tests.reliability.warm_libraries",
]
CHILD_TIMEOUT_S = 600  # a hung child fails the test instead of hanging it
WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES_DISK = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "link", "symlink", "truncate")


@dataclass(frozen=True)
class KillAtEvent:
    event: int


@dataclass(frozen=True)
class KillBefore:
    targets: tuple[str, ...]


@dataclass
class Outcome:
    exitcode: int
    events: int | None  # disk-changing calls of a run that finished; None when it was killed
    log: str

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


class _EventCounter:
    def __init__(self, kill_at: int | None):
        self.count = 0
        self.kill_at = kill_at

    def tick(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            _die()


def _die(*args, **kwargs) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_event_counter(kill_at: int | None, root: Path | None) -> _EventCounter:
    """Count (and kill at) the calls that change the disk under ``root`` (everywhere when None)."""
    import faiss
    import lightgbm
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counter = _EventCounter(kill_at)
    inside = str(root.resolve()) + os.sep if root is not None else ""

    def under_root(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(inside)
        except TypeError:  # a file descriptor
            return False

    def counting(function, changes_disk):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if changes_disk(*args, **kwargs):
                counter.tick()
            return function(*args, **kwargs)

        return wrapper

    def paths_under_root(*paths, dir_fd=None, **kwargs) -> bool:
        return dir_fd is not None or any(under_root(p) for p in paths[:2] if not isinstance(p, int))

    for name in CHANGES_DISK:
        if hasattr(os, name):
            setattr(os, name, counting(getattr(os, name), paths_under_root))
    os.open = counting(os.open, lambda path, flags, *a, **k: bool(flags & WRITE_FLAGS) and paths_under_root(path, **k))
    builtins.open = io.open = counting(
        io.open, lambda file, mode="r", *a, **k: bool(WRITE_MODES & set(str(mode))) and under_root(file))
    faiss.write_index = counting(faiss.write_index, lambda index, path, *a: under_root(path))
    lightgbm.Booster.save_model = counting(lightgbm.Booster.save_model, lambda self, path, *a, **k: under_root(path))

    def on_statement(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            counter.tick()

    event.listen(Engine, "before_cursor_execute", on_statement)
    event.listen(Engine, "commit", lambda conn: counter.tick())
    return counter


def _kill_before(targets: tuple[str, ...]) -> None:
    patched = 0
    for target in targets:
        module_name, _, qualname = target.partition(":")
        owner = importlib.import_module(module_name)
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        if hasattr(owner, name):
            setattr(owner, name, _die)
            patched += 1
    if not patched:
        raise LookupError(f"none of {targets} exists; nothing to kill at")


def run_command(args: list[str], kill: KillAtEvent | KillBefore | None = None) -> tuple[int, int]:
    """Run ``marketsearch ARGS`` in this process with the kill point installed; (exit code, events)."""
    from marketsearch.cli import app

    counter = _install_event_counter(kill.event if isinstance(kill, KillAtEvent) else None, _workspace_of(args))
    if isinstance(kill, KillBefore):
        _kill_before(kill.targets)
    try:
        app(args, prog_name="marketsearch")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, counter.count


def _workspace_of(args: list[str]) -> Path | None:
    for flag in ("-w", "--workspace"):
        if flag in args[:-1]:
            return Path(args[args.index(flag) + 1])
    return None


def _child(args: list[str], kill, log_path: str, result_path: str) -> None:
    import threading

    from tqdm import tqdm

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # tqdm's default lock is a multiprocessing semaphore, which a killed child cannot unlink (the resource
    # tracker would warn about it at the end of the test session); one process needs a thread lock only
    tqdm.set_lock(threading.RLock())
    code, events = run_command(args, kill)
    Path(result_path).write_text(json.dumps({"exitcode": code, "events": events}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@functools.cache
def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_forkserver() -> None:
    """Start the forkserver (it imports PRELOAD in the background) so that the first command does not wait."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def run(args: list[str], kill: KillAtEvent | KillBefore | None = None, *, log_dir: Path) -> Outcome:
    """Run ``marketsearch ARGS`` in a forked child with ``kill`` installed; wait for it to finish or die."""
    log_dir.mkdir(parents=True, exist_ok=True)
    number = len(list(log_dir.glob("run-*.log")))
    log_path, result_path = log_dir / f"run-{number:03d}.log", log_dir / f"run-{number:03d}.json"
    process = _context().Process(target=_child, args=(list(args), kill, str(log_path), str(result_path)))
    process.start()
    process.join(CHILD_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"marketsearch {' '.join(args)} did not finish in {CHILD_TIMEOUT_S}s")
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    events = json.loads(result_path.read_text())["events"] if result_path.exists() else None
    return Outcome(process.exitcode, events, log)


def copy_workspace(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--kill-at-event", type=int, help="SIGKILL just before the n-th disk-changing call")
    group.add_argument("--kill-before", action="append", help="SIGKILL when module:Class.method is called")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the marketsearch arguments")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    kill = (KillAtEvent(options.kill_at_event) if options.kill_at_event
            else KillBefore(tuple(options.kill_before)) if options.kill_before else None)
    code, events = run_command(command, kill)
    print(f"finished with exit code {code} after {events} disk-changing calls", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
