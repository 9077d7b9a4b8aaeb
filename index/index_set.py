"""The workspace's index set: the vector index, the BM25 index and the embeddings they were built from,
published together as one version behind one pointer.

    <workspace>/index/
      CURRENT                      -> "v-20261121T110000-1a2b3c"
      v-20261121T110000-1a2b3c/
        manifest.json              kind "index_set": model fingerprint, embeddings (count, digest), text
                                   digest, checkpoint (change-log seq), counts, and the sha256 of every
                                   file below
        vector/                    index.faiss, id_map.json, manifest.json  (`VectorIndex.write_to`)
        bm25/                      the bm25s files, listing_ids.json, manifest.json  (`BM25Index.write_to`)
        photo/                     the photo index (a `VectorIndex` over the listings' photo vectors, the
                                   image queries' photo retriever); absent when the catalogue stores none
      v-20261120T090000-9f8e7d/    the previous set (kept), older ones are deleted

The indexes are written into a temporary folder that becomes a version only when complete, and
``CURRENT`` is switched with one ``os.replace`` (``index.storage.atomic_version``): a reader sees the
previous set or the new one, never a vector index beside a BM25 index of another run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.bm25 import BM25Index
from index.storage import (
    CURRENT,
    REBUILD_HINT,
    IndexLoadError,
    atomic_version,
    current_version,
    new_version_name,
    open_version,
)
from index.vector_index import VectorIndex

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "index_set"
VECTOR_DIR = "vector"
BM25_DIR = "bm25"
PHOTO_DIR = "photo"
# Before index sets, vector/ and bm25/ were two versioned folders with a CURRENT each, published one
# after the other: a crash in between served a new vector index beside an old BM25 index.
LEGACY_DIRS = (VECTOR_DIR, BM25_DIR)
LEGACY_HINT = (
    "it was built by an older version that published the vector index and BM25 separately (a crash in "
    "between could leave them mismatched); publish them as one set with `marketsearch index --rebuild`"
)


@dataclass
class IndexSet:
    """One published version: its indexes and its manifest."""

    version: str
    manifest: dict
    vector: VectorIndex
    bm25: BM25Index
    # over the listings' photo vectors (encoders.appearance); None in a set published without photo vectors
    photo: VectorIndex | None = None

    @property
    def checkpoint(self) -> int:
        """The change-log seq this set reflects (0 for a set published before checkpoints: replay everything)."""
        return int(self.manifest.get("checkpoint", 0))


def digest_of(ids: Sequence[str], values: Sequence[str] | np.ndarray) -> str:
    """A sha256 over listing ids and their texts (or float32 vector rows), in order."""
    digest = hashlib.sha256()
    for listing_id in ids:
        digest.update(listing_id.encode())
        digest.update(b"\0")
    if isinstance(values, np.ndarray):
        digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    else:
        for text in values:
            digest.update(text.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def publish_index_set(index_dir: str | os.PathLike, vector: VectorIndex, bm25: BM25Index, *,
                      embeddings: dict, text_digest: str, checkpoint: int = 0,
                      photo: VectorIndex | None = None) -> str:
    """Write the indexes as a new version of ``index_dir`` and make it current; return the version.

    ``embeddings`` says which embeddings the vector index holds (``count``, ``digest`` = `digest_of` the
    listing ids and vectors); ``text_digest`` is `digest_of` the listing ids and the texts BM25 indexes;
    ``checkpoint`` the catalogue change-log seq the set reflects (serving processes replay the log past it);
    ``photo`` the photo index, when the catalogue stores photo vectors.
    """
    manifest = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": vector.model_fingerprint,
        "embeddings": {"model_fingerprint": vector.model_fingerprint, **embeddings},
        "text_digest": text_digest,
        "checkpoint": int(checkpoint),
        "vector": {"count": len(vector), "index_type": vector.manifest["index_type"], "nprobe": vector.nprobe},
        "bm25": {"count": len(bm25)},
    }
    if photo is not None:
        manifest["photo"] = {"count": len(photo), "dimension": photo.dimension,
                             "index_type": photo.manifest["index_type"], "nprobe": photo.nprobe}
    version = new_version_name()
    with atomic_version(index_dir, manifest, version) as folder:
        vector.write_to(folder / VECTOR_DIR)
        bm25.write_to(folder / BM25_DIR)
        if photo is not None:
            photo.write_to(folder / PHOTO_DIR)
    remove_legacy_layout(index_dir)
    return version


def has_legacy_layout(index_dir: str | os.PathLike) -> bool:
    index_dir = Path(index_dir)
    return not (index_dir / CURRENT).exists() and any((index_dir / name / CURRENT).exists() for name in LEGACY_DIRS)


def remove_legacy_layout(index_dir: str | os.PathLike) -> None:
    for name in LEGACY_DIRS:
        folder = Path(index_dir) / name
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s, the vector/BM25 layout before index sets", folder)


def load_index_set(index_dir: str | os.PathLike, *, expected_fingerprint: str | None = None,
                   expected_dimension: int | None = None, mmap: bool = False) -> IndexSet:
    """The current index set of ``index_dir``, after verifying every checksum it names. ``mmap``: the vector
    index is mapped read-only from its file (for serving: nothing may add to it), else read into memory.

    Raises IndexLoadError for a missing, corrupt or foreign set (or the layout before index sets), with
    the command that fixes it.
    """
    index_dir = Path(index_dir)
    if has_legacy_layout(index_dir):
        raise IndexLoadError(f"the indexes at {index_dir} use the old layout: {LEGACY_HINT}")
    version = current_version(index_dir)
    try:
        return _load(index_dir, expected_fingerprint, expected_dimension, mmap)
    except IndexLoadError:
        if current_version(index_dir) == version:
            raise
        # a writer published (and pruned the set being read) meanwhile: read the one CURRENT names now, once
        return _load(index_dir, expected_fingerprint, expected_dimension, mmap)


def _load(index_dir: Path, expected_fingerprint: str | None, expected_dimension: int | None,
          mmap: bool) -> IndexSet:
    folder, manifest = open_version(index_dir, "index set")
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexLoadError(
            f"{folder} holds {manifest.get('kind')!r} format {manifest.get('format_version')!r}, expected "
            f"{KIND!r} format {FORMAT_VERSION}; {REBUILD_HINT}"
        )
    vector = VectorIndex.read_from(folder / VECTOR_DIR, expected_fingerprint, expected_dimension, mmap=mmap,
                                   verify=False)
    bm25 = BM25Index.read_from(folder / BM25_DIR, verify=False)
    photo = None
    if "photo" in manifest:
        photo = VectorIndex.read_from(folder / PHOTO_DIR, expected_fingerprint, None, mmap=mmap, verify=False)
    return IndexSet(version=folder.name, manifest=manifest, vector=vector, bm25=bm25, photo=photo)
