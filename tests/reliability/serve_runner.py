"""`marketsearch serve` in a child process that is SIGKILLed and started again on the same port.

The child runs ``marketsearch.cli.app(["serve", ...])``, the function the `marketsearch` script calls, forked
from the crash tests' forkserver (`crash_runner`: torch, FAISS, LightGBM and the commands imported once), so a
restart costs the service's own start-up (model, indexes, the follower's replay of the change log) and not the
12-35 s of imports of a fresh interpreter on the shared 2-core machine. ``kill()`` is ``kill -9`` of that
process: no shutdown handler, no flush, whatever request is in flight dies with it.

The settings (``MARKETSEARCH_*``) are set in the child itself: a forkserver's children inherit the
forkserver's environment, not the one of the process that asks for them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.reliability.crash_runner import _context, start_forkserver


def _serve(args: list[str], env: dict[str, str], log_path: str) -> None:
    import threading

    from tqdm import tqdm

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(env)
    tqdm.set_lock(threading.RLock())  # as crash_runner's children: a killed process cannot unlink a semaphore
    from marketsearch.cli import app

    try:
        app(args, prog_name="marketsearch")
    except SystemExit as exit_:
        os._exit(exit_.code if isinstance(exit_.code, int) else 0)
    os._exit(0)


class KillableServer:
    """``marketsearch serve -w WORKSPACE --port PORT`` on 127.0.0.1 with ``env`` added to its settings."""

    def __init__(self, workspace: Path, port: int, env: dict[str, str], log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.args = ["serve", "--workspace", str(workspace), "--port", str(port), "--log-level", "warning"]
        self.env, self.log_path = dict(env), log_path
        self.process = None
        start_forkserver()

    def start(self, timeout: float = 300.0) -> float:
        """Start it and wait until /health answers 200; the seconds that took."""
        assert self.process is None or not self.process.is_alive(), "already running"
        started = time.monotonic()
        self.process = _context().Process(target=_serve, args=(self.args, self.env, str(self.log_path)))
        self.process.start()
        while True:
            if not self.process.is_alive():
                raise RuntimeError(f"serve exited with {self.process.exitcode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                self.kill()
                raise TimeoutError(f"serve did not answer /health 200 in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap it."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> KillableServer:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
