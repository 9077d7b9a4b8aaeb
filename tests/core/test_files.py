"""Temporaries that carry their writer's pid, and the clean-up of the ones a killed writer left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.files import TEMPORARY_NAME, remove_stale_temporaries, replace_dir, temporary_path, write_atomic


@pytest.fixture(scope="module")
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _as_written_by(path, pid: int):
    return path.with_name(path.name.replace(f".{os.getpid()}-", f".{pid}-"))


def test_temporary_names_carry_the_target_and_the_pid(tmp_path):
    match = TEMPORARY_NAME.match(temporary_path(tmp_path / "labels.json").name)
    assert (match["target"], int(match["pid"])) == ("labels.json", os.getpid())
    write_atomic(tmp_path / "labels.json", lambda tmp: tmp.write_text("{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


def test_only_what_dead_writers_left_is_removed(tmp_path, dead_pid):
    mine = temporary_path(tmp_path / "index-version")
    mine.mkdir()
    (mine / "half.faiss").write_bytes(b"partial")
    theirs = _as_written_by(temporary_path(tmp_path / "photo.jpg"), dead_pid)
    theirs.write_bytes(b"partial")
    parent_pid = _as_written_by(temporary_path(tmp_path / "bundle"), os.getppid())  # a live writer
    parent_pid.mkdir()
    kept = [tmp_path / "photo.jpg", tmp_path / ".hidden-config"]
    for path in kept:
        path.write_bytes(b"data")

    done = remove_stale_temporaries([tmp_path, tmp_path / "missing"])
    assert done == [f"removed {theirs}"]
    assert mine.is_dir() and parent_pid.is_dir() and all(p.exists() for p in kept)


def test_a_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path, dead_pid):
    ranker = tmp_path / "ranker"
    ranker.mkdir()
    (ranker / "model.txt").write_text("previous")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.txt").write_text("new")
    replace_dir(staging, ranker)
    assert (ranker / "model.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["ranker"]

    # killed between the two renames: the previous folder is aside, the new one never arrived
    aside = _as_written_by(temporary_path(ranker, "old"), dead_pid)
    os.replace(ranker, aside)
    assert remove_stale_temporaries([tmp_path]) == [f"restored {ranker} (a replacement was interrupted)"]
    assert (ranker / "model.txt").read_text() == "new"

    # killed after both renames: the folder aside is only old
    aside.mkdir()
    assert remove_stale_temporaries([tmp_path]) == [f"removed {aside}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranker"]


def test_older_unnamed_temporaries_go_newer_ones_stay(tmp_path):
    old = tmp_path / ".tmp-v-20261121T110000-1a2b3c"
    old.mkdir()
    os.utime(old, (0, 0))
    new = tmp_path / ".labels.json.k2j3h4.tmp"
    new.write_text("{}")  # written after this process started: may belong to a running older version
    assert remove_stale_temporaries([tmp_path]) == [f"removed {old}"]
    assert new.exists()
