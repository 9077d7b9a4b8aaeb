"""`marketsearch keys create|list|revoke`."""

from __future__ import annotations

from typer.testing import CliRunner

from catalog.api_keys import verify_key
from catalog.store import Catalog
from marketsearch.cli import app


def test_create_prints_the_key_once_list_hides_it_and_revoke_ends_it(tmp_path):
    workspace = tmp_path / "ws"
    Catalog(workspace / "catalog.db").close()
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--scope", "listings:write", "--seller", "s1", "--name", "shop",
                                  "--workspace", str(workspace)])  # fmt: skip
    assert created.exit_code == 0, created.output
    text = created.stdout.splitlines()[0]
    assert text.startswith("ms_")
    with Catalog(workspace / "catalog.db") as catalog:
        key = verify_key(catalog, text)
    assert (key.scope, key.seller_id, key.name) == ("listings:write", "s1", "shop")

    listed = runner.invoke(app, ["keys", "list", "--workspace", str(workspace)])
    assert listed.exit_code == 0 and key.id in listed.output and "s1" in listed.output
    assert text.split("_", 2)[2] not in listed.output

    assert runner.invoke(app, ["keys", "revoke", key.id, "--workspace", str(workspace)]).exit_code == 0
    with Catalog(workspace / "catalog.db") as catalog:
        assert verify_key(catalog, text) is None
    again = runner.invoke(app, ["keys", "revoke", key.id, "--workspace", str(workspace)])
    assert again.exit_code == 1 and "no active key" in again.output

    bad = runner.invoke(app, ["keys", "create", "--scope", "root", "--workspace", str(workspace)])
    assert bad.exit_code == 2 and "unknown scope" in bad.output
    none = runner.invoke(app, ["keys", "list", "--workspace", str(tmp_path / "empty")])
    assert none.exit_code == 2 and "no catalogue" in none.output
