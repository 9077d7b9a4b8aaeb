from pathlib import Path

import pytest

from core.workspace import DEFAULT_ROOT_ENV, Workspace, built_workspace, new_stamped_dir


def test_new_stamped_dir_never_reuses_a_taken_name(tmp_path):
    first = new_stamped_dir(tmp_path / "runs", "20261121-120000")
    (first / "config.json").write_text("{}")
    second = new_stamped_dir(tmp_path / "runs", "20261121-120000")
    third = new_stamped_dir(tmp_path / "runs", "20261121-120000")

    assert [p.name for p in (first, second, third)] == ["20261121-120000", "20261121-120000-2", "20261121-120000-3"]
    assert all(p.is_dir() for p in (first, second, third))
    assert (first / "config.json").read_text() == "{}"  # the earlier run is left untouched


def _with_catalogue(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "catalog.db").write_bytes(b"")
    return root


@pytest.fixture()
def repo_cwd(tmp_path, monkeypatch):
    """A fresh checkout's root as the working directory, without $MARKETSEARCH_HOME."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEFAULT_ROOT_ENV, raising=False)
    return tmp_path


def test_serve_default_falls_back_to_the_demo_workspace_and_says_so(repo_cwd):
    _with_catalogue(repo_cwd / "workspace" / "demo")  # what `make demo` leaves behind
    root, note = built_workspace(Path("workspace"))
    assert root == Path("workspace/demo")
    assert note is not None and "\n" not in note and "workspace/demo" in note


def test_serve_keeps_a_workspace_that_has_a_catalogue(repo_cwd):
    _with_catalogue(repo_cwd / "workspace")
    _with_catalogue(repo_cwd / "workspace" / "demo")
    assert built_workspace(Path("workspace")) == (Path("workspace"), None)
    assert built_workspace(Path("workspace/demo")) == (Path("workspace/demo"), None)


def test_serve_named_workspace_never_falls_back_and_names_the_command(repo_cwd, monkeypatch):
    _with_catalogue(repo_cwd / "workspace" / "demo")
    with pytest.raises(FileNotFoundError, match=r"marketsearch serve --workspace workspace/demo"):
        built_workspace(Path("elsewhere"))
    monkeypatch.setenv(DEFAULT_ROOT_ENV, "workspace")  # named through the environment: no fallback either
    with pytest.raises(FileNotFoundError, match=r"marketsearch serve --workspace workspace/demo"):
        built_workspace(Path("workspace"))


def test_serve_without_any_catalogue_says_how_to_build_one(repo_cwd):
    with pytest.raises(FileNotFoundError, match=r"make demo.*marketsearch serve --workspace workspace/demo"):
        built_workspace(Path("workspace"))


def test_the_catalogue_url_comes_from_the_environment_then_the_workspace_file_then_sqlite(tmp_path, monkeypatch):
    from core.workspace import DATABASE_URL_ENV

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    ws = Workspace.at(tmp_path / "ws")
    assert ws.db_url == f"sqlite:///{ws.db_path}" and ws.uses_own_sqlite
    assert not ws.has_catalogue()  # no SQLite file yet
    ws.use_database("postgresql+psycopg://market@db.internal/catalogue")
    assert Workspace.at(tmp_path / "ws").db_url == "postgresql+psycopg://market@db.internal/catalogue"
    assert ws.has_catalogue() and not ws.uses_own_sqlite
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://other@host/db")
    assert ws.db_url == "postgresql+psycopg://other@host/db"


def test_a_database_url_with_a_password_is_not_recorded(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(ValueError, match="PGPASSWORD"):
        ws.use_database("postgresql+psycopg://market:s3cret@db.internal/catalogue")
    assert not ws.database_url_path.exists()
