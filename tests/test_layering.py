"""The package layering of pyproject.toml's [tool.importlinter] holds for every import in the code."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from importlinter.cli import EXIT_STATUS_ERROR, EXIT_STATUS_SUCCESS, lint_imports

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_loggers_enabled():
    """lint_imports runs logging.config.dictConfig, which disables every logger that exists already; a
    later test asserting on caplog records (tests/encoders/test_backbones.py) would then see none."""
    loggers = [log for log in logging.root.manager.loggerDict.values() if isinstance(log, logging.Logger)]
    disabled = {log: log.disabled for log in loggers}
    yield
    for log, was in disabled.items():
        log.disabled = was


def test_no_package_imports_a_higher_layer():
    status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == EXIT_STATUS_SUCCESS


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path, monkeypatch):
    for name, body in {
        "layer_low": "def load():\n    from layer_high import serve  # reaches up a layer\n    return serve\n",
        "layer_high": "from layer_low import load\n\nserve = load\n",
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
    config = tmp_path / ".importlinter"
    config.write_text(
        "[importlinter]\nroot_packages =\n    layer_low\n    layer_high\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\nlayers =\n    layer_high\n    layer_low\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == EXIT_STATUS_ERROR
    (tmp_path / "layer_low" / "__init__.py").write_text("def load():\n    return None\n")
    for name in ("layer_low", "layer_high"):
        sys.modules.pop(name, None)
    assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == EXIT_STATUS_SUCCESS
