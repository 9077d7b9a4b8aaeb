"""The CLI's logging setup: a newcomer's log shows our INFO lines, not third-party noise that reads as failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Imports FAISS (its loader logs a ModuleNotFoundError per SIMD build it does not find) and bm25s (which
# sets its own logger to DEBUG), then raises the two benign warnings ranx's first compare() raises.
SCRIPT = """
import logging, sys, warnings
from marketsearch.cli import configure_logging
configure_logging(verbose=sys.argv[1] == "1")
import faiss, bm25s
logging.getLogger("bm25s").debug("bm25s debug line")
logging.getLogger("index.ivf").info("our info line")
warnings.warn_explicit("unsafe cast from uint64 to int64. Precision may be lost.", UserWarning,
                       "/venv/site-packages/ranx/metrics/ndcg.py", 72)
warnings.warn_explicit("Precision loss occurred in moment calculation due to catastrophic cancellation.",
                       RuntimeWarning, "/venv/site-packages/scipy/stats/_axis_nan_policy.py", 430)
"""


def _stderr(verbose: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, "1" if verbose else "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def quiet() -> str:
    return _stderr(verbose=False)


def test_faiss_loader_and_bm25s_debug_are_hidden(quiet):
    assert "our info line" in quiet
    assert "faiss.loader" not in quiet and "ModuleNotFoundError" not in quiet and "swigfaiss" not in quiet
    assert "DEBUG" not in quiet and "bm25s debug line" not in quiet


def test_benign_numba_and_scipy_warnings_are_hidden(quiet):
    assert "unsafe cast" not in quiet and "Precision loss" not in quiet


def test_verbose_shows_everything():
    loud = _stderr(verbose=True)
    assert "bm25s debug line" in loud and "unsafe cast" in loud
    if "faiss.loader" not in loud:  # a FAISS build with no optional SIMD variants logs nothing at INFO
        pytest.skip("this FAISS build's loader logs nothing")


def test_serve_after_make_demo_serves_workspace_demo(tmp_path, monkeypatch):
    """`marketsearch serve` with no --workspace, from a checkout where only `make demo` has run."""
    import uvicorn
    from typer.testing import CliRunner

    import api.main
    from bench.http_load import free_port
    from marketsearch.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MARKETSEARCH_HOME", raising=False)
    served = {}

    def run(server, sockets):
        served.update(workspace=server.config.app.workspace)
        server.started = True

    monkeypatch.setattr(api.main, "create_app", lambda settings: settings)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    runner = CliRunner()

    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "make demo" in result.output and not served

    (tmp_path / "workspace" / "demo").mkdir(parents=True)
    (tmp_path / "workspace" / "demo" / "catalog.db").write_bytes(b"")
    result = runner.invoke(app, ["serve", "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert served["workspace"] == Path("workspace/demo")
    assert "serving the demo workspace workspace/demo/" in result.output


@pytest.mark.parametrize("command", [["catalog", "stats"], ["embed"], ["index"], ["train", "--config", "tiny"]])
def test_commands_on_an_unusable_catalogue_end_with_one_line(tmp_path, tiny_model, command):
    """Every command that opens the catalogue: a clear one-line error and exit status 2, not a traceback."""
    from typer.testing import CliRunner

    from marketsearch.cli import app

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "catalog.db").write_text("id,title\nL1,bike\n")  # not an SQLite file
    tiny_model.save(workspace / "model")  # embed and index load the model before the catalogue
    tiny_model.labels.to_json(workspace / "labels.json")  # train reads the labels first
    result = CliRunner().invoke(app, [*command, "--workspace", str(workspace)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert f"{workspace / 'catalog.db'} cannot be used: the file is not an SQLite database" in lines[0]
    assert "marketsearch ingest" in lines[0]
