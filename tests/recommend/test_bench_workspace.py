"""`bench_recs.py --end-to-end` times train-recs on what it wrote: the workspace must give train-recs' readers
exactly the synthetic catalogue, vectors and events the in-memory benchmark trains on."""

from __future__ import annotations

import numpy as np

from bench.bench_recs import fill_workspace, synthetic_items, synthetic_log
from catalog.store import Catalog
from core.workspace import Workspace
from recommend import folder
from recommend.data import load_event_log, load_items


def test_the_end_to_end_workspace_reads_back_as_the_in_memory_data(tmp_path):
    rng = np.random.default_rng(0)
    items, topic = synthetic_items(300, 12, 16, rng)
    log = synthetic_log(items, topic, 120, 2500, 1.6e9, rng)
    filled = fill_workspace(str(tmp_path / "ws"), items, log, 16)
    assert filled["listings"] == 300 and filled["events"] == 2500

    ws = Workspace.at(tmp_path / "ws")
    with Catalog(ws.db_url, root=ws.root) as catalog:
        read = load_items(catalog, folder.workspace_fingerprint(ws))
        events = load_event_log(catalog)
    assert read.ids == items.ids
    np.testing.assert_array_equal(read.vectors, items.vectors)
    assert list(read.top_category) == list(items.top_category) and list(read.town) == list(items.town)
    np.testing.assert_allclose(read.price, items.price)
    np.testing.assert_array_equal(read.band, items.band)
    # events come back oldest first, as the log was generated
    assert list(events.users) == list(log.users) and list(events.listings) == list(log.listings)
    np.testing.assert_array_equal(events.types, log.types)
    np.testing.assert_allclose(events.times, log.times, atol=1e-5)
