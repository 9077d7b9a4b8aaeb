"""`marketsearch embed --ray` encodes on Ray Data actors and stores exactly the single-process vectors."""

import shutil

import numpy as np
from sqlalchemy import delete

from catalog.store import Catalog
from core.workspace import Workspace
from encoders.bundle import MultiModalModel
from encoders.embed import listing_embeddings, load_embeddings


def test_embed_on_ray_stores_the_vectors_of_the_single_process_run(trained_workspace, ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from marketsearch.cli import app

    root = tmp_path / "ws"
    shutil.copytree(trained_workspace.root, root)
    workspace = Workspace.at(root)
    fingerprint = MultiModalModel.load(workspace.model_dir).fingerprint
    with Catalog(workspace.db_url, root=root) as catalog:
        before = load_embeddings(catalog, fingerprint)  # written by the single-process `embed`
        with_photo = [i for i, has in zip(before.ids, before.has_image) if has]
        text_only = [i for i, has in zip(before.ids, before.has_image) if not has]
        redo = with_photo[::40] + text_only[:4]  # listings with photos and text-only ones alike
        with catalog.engine.begin() as conn:
            conn.execute(delete(listing_embeddings).where(listing_embeddings.c.listing_id.in_(redo)))

    outcome = CliRunner().invoke(app, ["embed", "-w", str(root), "--ray", "auto", "--actors", "2", "--json",
                                       "--batch-size", "8"])
    assert outcome.exit_code == 0, outcome.output
    assert "encoding on Ray with 2 actor(s)" in outcome.output
    with Catalog(workspace.db_url, root=root) as catalog:
        after = load_embeddings(catalog, fingerprint)
    assert after.ids == before.ids
    for column in ("text", "image", "listing"):
        assert np.abs(getattr(after, column) - getattr(before, column)).max() <= 1e-6, column
    np.testing.assert_array_equal(after.has_image, before.has_image)
    assert text_only and len(redo) >= 8
