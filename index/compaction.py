"""Compaction: fold the live catalogue changes into a new published index set, one process at a time.

Compaction is the batch path under a lock: `embed_catalog` (encodes only new and changed listings, records
the checkpoint it read first) then `update_indexes` (incremental, publishes a new set with that checkpoint
through the atomic publishing protocol of index.index_set). A `kill -9` anywhere leaves `CURRENT` naming the
previous set, whole. The lock is an advisory `flock` on ``<index_dir>/compaction.lock``: the serving
processes that all want to compact at once (each follows the same log) let one do it and the others skip;
the kernel drops the lock of a killed holder.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catalog.store import Catalog
from encoders.embed import embed_catalog, model_photo_dim
from index.update import IndexReport, update_indexes

logger = logging.getLogger(__name__)

LOCK_FILE = "compaction.lock"


@contextmanager
def compaction_lock(index_dir: str | os.PathLike, *, wait: bool = False) -> Iterator[bool]:
    """Hold the index folder's compaction lock; yields False (and holds nothing) when another process has it
    and ``wait`` is False."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compact(workspace, model, *, wait: bool = False) -> IndexReport | None:
    """Embed what changed and publish a new index set with the new checkpoint; None when another process holds
    the lock (it is compacting the same log)."""
    with compaction_lock(workspace.index_dir, wait=wait) as held:
        if not held:
            return None
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            stats = embed_catalog(model, catalog, progress=False)
        report = update_indexes(workspace, fingerprint=model.fingerprint, photo_dim=model_photo_dim(model))
        logger.info("compaction: %d listings re-embedded, index set %s (%s), checkpoint %d", stats.encoded,
                    report.index_set, "published" if report.published else "unchanged", report.checkpoint)
        return report
