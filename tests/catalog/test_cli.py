import json

import pytest
from typer.testing import CliRunner

from marketsearch.cli import app

runner = CliRunner()


def test_demo_data_ingest_and_stats(tmp_path):
    out, ws = tmp_path / "export", tmp_path / "ws"
    result = runner.invoke(app, ["demo-data", "--out", str(out), "--listings", "20", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "expected after ingest: 20 listings" in result.output
    args = ["--products", str(out / "Products.csv"), "--images", str(out / "Images.csv")]
    result = runner.invoke(app, ["ingest", *args, "--image-dir", str(out / "images"), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert "listings loaded:     20" in result.output
    assert "bad_price" in result.output and "quarantine report:" in result.output
    assert "unexplained drops:   0" in result.output
    result = runner.invoke(app, ["catalog", "stats", "-w", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["listings"] == 20 and stats["categories"] == 13


def test_ingest_with_wrong_columns_exits_with_a_message(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "P.csv").write_text(",id,name\n1,a,b\n")
    (tmp_path / "I.csv").write_text(",id,product_id,bucket_link,image_ref,create_time\n")
    result = runner.invoke(
        app,
        ["ingest", "--products", str(tmp_path / "P.csv"), "--images", str(tmp_path / "I.csv"),
         "--image-dir", str(tmp_path / "images"), "-w", str(tmp_path / "ws")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "missing column(s)" in result.output and "product_name" in result.output


def test_stats_without_a_catalogue_explains_what_to_do(tmp_path):
    result = runner.invoke(app, ["catalog", "stats", "-w", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "marketsearch ingest" in result.output


@pytest.mark.postgres
def test_ingest_into_postgresql_records_the_database_for_every_later_command(tmp_path, postgres_server, monkeypatch):
    from core.workspace import DATABASE_URL_ENV

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    out, ws, url = tmp_path / "export", tmp_path / "ws", postgres_server.create_database()
    assert runner.invoke(app, ["demo-data", "--out", str(out), "--listings", "20", "--seed", "3"]).exit_code == 0
    args = ["--products", str(out / "Products.csv"), "--images", str(out / "Images.csv"), "--image-dir",
            str(out / "images")]
    result = runner.invoke(app, ["ingest", *args, "-w", str(ws), "--db", url])
    assert result.exit_code == 0, result.output
    assert (ws / "database.url").read_text().strip() == url and not (ws / "catalog.db").exists()
    result = runner.invoke(app, ["catalog", "stats", "-w", str(ws), "--json"])  # no --db: the recorded URL
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["listings"] == 20
