"""`marketsearch serve` as a real process: what it says when it cannot listen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.fakes import tiny_catalog

MARKETSEARCH = Path(sys.executable).parent / "marketsearch"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_fails_before_loading_and_names_the_port(tmp_path, workers):
    tiny_catalog(tmp_path / "ws").close()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        command = [str(MARKETSEARCH), "serve", "-w", str(tmp_path / "ws"), "--port", str(port)]
        command += ["--workers", str(workers)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)  # a hang guard only
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"127.0.0.1:{port} is already in use" in done.stderr
    assert "--port" in done.stderr and "stop the process" in done.stderr
    assert "Traceback" not in done.stderr
    assert "torch and faiss use" not in done.stderr  # the app's start-up (loading) never began


def test_the_supervisor_of_several_workers_does_not_load_the_app(tmp_path):
    """With --workers N each worker imports the app; the supervisor importing it too (torch, FAISS, LightGBM)
    held 1.1 GB of memory for nothing."""
    from bench.http_load import free_port

    tiny_catalog(tmp_path / "ws").close()
    script = (
        "import sys, uvicorn\n"
        "heavy = {'torch', 'faiss', 'api.main'}\n"
        "uvicorn.run = lambda *args, **kwargs: print('loaded:', sorted(heavy & set(sys.modules)))\n"
        "from marketsearch.cli import app\n"
        f"app(['serve', '-w', {str(tmp_path / 'ws')!r}, '--workers', '2', '--port', '{free_port()}'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout
