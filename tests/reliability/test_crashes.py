"""kill -9 of the writing commands at random points and at the awkward one; after every kill the service
starts and serves a consistent artefact set, nothing stale is left after that start, and re-running the
command completes with what a clean run gives.

Each command runs in a child process (``crash_runner``: forked from a warm forkserver, fault injection in
the child only) on a private copy of a demo workspace. Kill points are drawn from a seeded RNG among the
calls that change the workspace in a clean run of the same command, so a failure reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from core.workspace import Workspace
from tests.reliability import artefact_checks as checks
from tests.reliability.crash_runner import KillAtEvent, KillBefore, run

pytestmark = pytest.mark.reliability

SEED = 11  # issue #11
# Between writing the vector index and writing BM25 (the old code published them one after the other).
BETWEEN_VECTOR_AND_BM25 = KillBefore(("index.bm25:BM25Index.save", "index.bm25:BM25Index.write_to"))
# Just before the first temporary file of the run is renamed into place (core.files.write_atomic).
BEFORE_PUBLISHING_A_FILE = KillBefore(("os:replace",))
RANKER_ARGS = ["--threads", "1", "--protocol", "text", "--trees", "30", "--max-queries", "30"]


def _copy(workspace: Workspace, target) -> Workspace:
    shutil.copytree(workspace.root, target)
    return Workspace.at(target)


def kill_points(rng: np.random.Generator, events: int, cycles: int, *, resumable: bool) -> list[int]:
    """Where each cycle's child dies, counted in workspace-changing calls of that run: independent draws
    in [1, events] for a command that starts over every run; for one that resumes (a re-run skips what is
    done: ingest, embed), the steps between sorted draws, so the kills walk through one run."""
    if resumable:
        points = np.sort(rng.choice(np.arange(1, events + 1), size=cycles, replace=False))
        return np.diff(points, prepend=0).tolist()
    return rng.integers(1, events + 1, size=cycles).tolist()


def kill_cycles(commands: list[list[str]], points: list[int | KillBefore], workspace: Workspace, log_dir, after_kill,
                after_finish=None) -> dict:
    """Run ``commands[i]`` killed at ``points[i]`` (a count of disk-changing calls, or a named call); after each
    kill, ``after_kill()`` (which starts the service) and then nothing stale may remain; ``after_finish()``
    when a run ended before its kill point. Returns counts for the summary."""
    summary = {"kill_points": points, "kills": 0, "finished_first": 0, "kills_leaving_temporaries": 0}
    for args, point in zip(commands, points):
        outcome = run(args, point if isinstance(point, KillBefore) else KillAtEvent(point), log_dir=log_dir)
        if not outcome.killed:
            assert outcome.exitcode == 0, outcome.tail()
            summary["finished_first"] += 1
            if after_finish is not None:
                after_finish()
            continue
        summary["kills"] += 1
        summary["kills_leaving_temporaries"] += bool(checks.temporaries(workspace.root))
        after_kill()
        assert checks.temporaries(workspace.root) == [], "the start after a kill left stale temporaries"
    return summary


def test_kill_between_vector_and_bm25_leaves_the_previous_pair(indexed_workspace, tmp_path):
    from search.pipeline import Searcher

    workspace = _copy(indexed_workspace, tmp_path / "ws")
    added = checks.add_listing_like(workspace, sorted(checks.catalogue_ids(workspace))[0])
    killed = run(["index", "--rebuild", "-w", str(workspace.root)], BETWEEN_VECTOR_AND_BM25, log_dir=tmp_path / "logs")
    assert killed.killed, killed.tail()

    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    vector_ids, bm25_ids = set(searcher.vector_index.listing_ids), set(searcher.bm25.listing_ids)
    assert vector_ids <= bm25_ids, (
        f"half-published pair: the vector index holds {sorted(vector_ids - bm25_ids)}, BM25 does not")
    assert added not in vector_ids  # the interrupted run published nothing
    assert checks.temporaries(workspace.root), "the kill left no work in progress: it missed the publishing step"

    checks.assert_serves_a_consistent_set(workspace)  # the next start also removes what the kill left
    assert checks.temporaries(workspace.root) == []
    rerun = run(["index", "--rebuild", "-w", str(workspace.root)], log_dir=tmp_path / "logs")
    assert rerun.exitcode == 0, rerun.tail()
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    assert added in set(searcher.vector_index.listing_ids) and added in set(searcher.bm25.listing_ids)
    checks.assert_serves_a_consistent_set(workspace)


def test_index_killed_at_random_points(indexed_workspace, tmp_path):
    workspace = _copy(indexed_workspace, tmp_path / "ws")
    root, logs = str(workspace.root), tmp_path / "logs"
    clean = run(["index", "--rebuild", "-w", root], log_dir=logs)
    assert clean.exitcode == 0 and clean.events, clean.tail()
    sources = sorted(checks.catalogue_ids(workspace))
    added = []

    def next_change():  # every run has something to publish: one more listing in the catalogue
        added.append(checks.add_listing_like(workspace, sources[len(added)]))

    next_change()
    points = kill_points(np.random.default_rng(SEED), clean.events, 4, resumable=False)
    commands = [["index", "-w", root], ["index", "--rebuild", "-w", root]] * 2  # incremental and rebuild
    summary = kill_cycles(commands, points, workspace, logs, lambda: checks.assert_serves_a_consistent_set(workspace),
                          after_finish=next_change)
    print(f"index: {clean.events} workspace-changing calls per run; {summary}")
    assert summary["kills"] >= 3 and summary["kills_leaving_temporaries"] >= 1, summary

    rerun = run(["index", "-w", root], log_dir=logs)
    assert rerun.exitcode == 0, rerun.tail()
    checks.assert_serves_a_consistent_set(workspace)
    from index.index_set import load_index_set

    index_set = load_index_set(workspace.index_dir)
    assert set(added) <= set(index_set.vector.listing_ids) and set(added) <= set(index_set.bm25.listing_ids)


def test_embed_killed_at_random_points_resumes_to_a_clean_run(indexed_workspace, tmp_path):
    start = _copy(indexed_workspace, tmp_path / "start")
    ids = sorted(checks.catalogue_ids(start))
    checks.forget_embeddings(start, ids[: 2 * len(ids) // 3])  # listings ingested since the last embed
    reference, workspace = _copy(start, tmp_path / "reference"), _copy(start, tmp_path / "ws")
    logs = tmp_path / "logs"
    clean = run(["embed", "-w", str(reference.root)], log_dir=logs)
    assert clean.exitcode == 0 and clean.events, clean.tail()

    def after_kill():
        checks.assert_embeddings_whole(workspace)
        checks.assert_serves_a_consistent_set(workspace)

    points = kill_points(np.random.default_rng(SEED), clean.events, 3, resumable=True)
    summary = kill_cycles([["embed", "-w", str(workspace.root)]] * len(points), points, workspace, logs, after_kill)
    print(f"embed: {clean.events} workspace-changing calls in a clean run; {summary}")
    assert summary["kills"] >= 2, summary

    rerun = run(["embed", "-w", str(workspace.root)], log_dir=logs)
    assert rerun.exitcode == 0, rerun.tail()
    assert checks.embedding_rows(workspace) == checks.embedding_rows(reference)  # nothing missing, nothing twice
    resumed, expected = checks.stored_vectors(workspace), checks.stored_vectors(reference)
    for listing_id, vector in expected.items():
        np.testing.assert_allclose(np.frombuffer(resumed[listing_id], np.float32),
                                   np.frombuffer(vector, np.float32), atol=1e-5)
    checks.assert_serves_a_consistent_set(workspace)


def test_ingest_killed_at_random_points_resumes_to_a_clean_run(demo_export, tmp_path):
    export = ["--products", str(demo_export.products_csv), "--images", str(demo_export.images_csv),
              "--image-dir", str(demo_export.image_dir)]
    reference, workspace = Workspace.at(tmp_path / "reference"), Workspace.at(tmp_path / "ws")
    logs = tmp_path / "logs"
    clean = run(["ingest", "-w", str(reference.root), *export], log_dir=logs)
    assert clean.exitcode == 0 and clean.events, clean.tail()

    def after_kill():
        if workspace.db_path.exists():
            checks.assert_photos_complete(workspace)
        served = checks.serve(workspace)  # no model yet: the service starts and names the command to run
        assert served["status"] == 503 and "marketsearch" in served["health"]["detail"], served

    # seeded random points, then one kill just before a temporary file is moved into place, so a dead writer's
    # temporary is always left for the next start to clean, wherever the random points fell
    points = [*kill_points(np.random.default_rng(SEED), clean.events, 4, resumable=True), BEFORE_PUBLISHING_A_FILE]
    summary = kill_cycles([["ingest", "-w", str(workspace.root), *export]] * len(points), points, workspace, logs,
                          after_kill)
    print(f"ingest: {clean.events} workspace-changing calls in a clean run; {summary}")
    assert summary["kills"] >= 3 and summary["kills_leaving_temporaries"] >= 1, summary

    rerun = run(["ingest", "-w", str(workspace.root), *export], log_dir=logs)
    assert rerun.exitcode == 0, rerun.tail()
    assert checks.catalogue_rows(workspace) == checks.catalogue_rows(reference)  # nothing missing, nothing twice
    for name in ("labels.json", "quarantine/latest.csv"):
        assert (workspace.root / name).read_text() == (reference.root / name).read_text(), name
    photos = sorted(p.name for p in workspace.images_dir.iterdir())
    assert photos == sorted(p.name for p in reference.images_dir.iterdir())
    checks.assert_photos_complete(workspace)


def test_train_ranker_killed_at_random_points_keeps_a_whole_ranker(indexed_workspace, tmp_path):
    workspace = _copy(indexed_workspace, tmp_path / "ws")
    args, logs = ["train-ranker", "-w", str(workspace.root), *RANKER_ARGS], tmp_path / "logs"
    clean = run(args, log_dir=logs)  # installs the re-ranker the kills must never lose
    assert clean.exitcode == 0 and clean.events, clean.tail()
    assert (workspace.ranker_dir / "model.txt").is_file()

    points = kill_points(np.random.default_rng(SEED), clean.events, 3, resumable=False)
    summary = kill_cycles([args] * len(points), points, workspace, logs,
                          lambda: checks.assert_serves_a_consistent_set(workspace, reranked=True))
    print(f"train-ranker: {clean.events} workspace-changing calls in a clean run; {summary}")
    assert summary["kills"] >= 2, summary

    rerun = run(args, log_dir=logs)
    assert rerun.exitcode == 0, rerun.tail()
    checks.assert_serves_a_consistent_set(workspace, reranked=True)


def test_compaction_killed_at_random_points_leaves_the_previous_set_serving(indexed_workspace, tmp_path):
    """`marketsearch index --compact` (what a serving process's compaction runs: embed the live changes, then
    publish a new index set) killed at seeded points: the service then serves a whole set, the previous one
    when the kill came before the publish, and a re-run (the killed holder's lock is gone) folds in every
    change."""
    from catalog.store import Catalog
    from index.index_set import load_index_set
    from index.storage import current_version

    workspace = _copy(indexed_workspace, tmp_path / "ws")
    root, logs = str(workspace.root), tmp_path / "logs"
    sources = sorted(checks.catalogue_ids(workspace))
    created = []

    def next_change():  # a live write: a new listing (to embed) and one sold, so every run has work to publish
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            source = catalog.get_listing(sources[len(created)])
            new = dataclasses.replace(source, id=f"live-{len(created)}", title=f"compacted {source.title}",
                                      image_ids=())
            catalog.upsert_listings([new, dataclasses.replace(source, status="sold")])
        created.append(new.id)

    reference = _copy(workspace, tmp_path / "reference")
    clean = run(["index", "--compact", "-w", str(reference.root)], log_dir=logs)
    assert clean.exitcode == 0 and clean.events, clean.tail()

    served_before = [current_version(workspace.index_dir)]
    previous_kept = []

    def after_kill():
        checks.assert_serves_a_consistent_set(workspace)
        previous_kept.append(current_version(workspace.index_dir) == served_before[-1])
        after_run()

    def after_run():
        served_before.append(current_version(workspace.index_dir))
        next_change()

    next_change()
    # seeded points, then one just before the first file of the new set is moved into place (mid-publish)
    points = [*kill_points(np.random.default_rng(SEED), clean.events, 4, resumable=False), BEFORE_PUBLISHING_A_FILE]
    summary = kill_cycles([["index", "--compact", "-w", root]] * len(points), points, workspace, logs, after_kill,
                          after_finish=after_run)
    print(f"index --compact: {clean.events} workspace-changing calls per run; {summary}; "
          f"previous set kept after kills: {previous_kept}")
    assert summary["kills"] >= 4 and summary["kills_leaving_temporaries"] >= 1 and any(previous_kept), (
        summary, previous_kept)

    rerun = run(["index", "--compact", "-w", root], log_dir=logs)
    assert rerun.exitcode == 0, rerun.tail()
    checks.assert_serves_a_consistent_set(workspace)
    index_set = load_index_set(workspace.index_dir)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        assert index_set.checkpoint == catalog.last_change()
        sold = {x.id for x in catalog.get_listings(sources[: len(created)]) if x.status == "sold"}
    assert set(created) <= set(index_set.vector.listing_ids) and set(created) <= set(index_set.bm25.listing_ids)
    assert len(sold) == len(created) and not sold & set(index_set.vector.listing_ids)
