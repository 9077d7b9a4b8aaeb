"""Atomic, checksummed, versioned folders.

A root folder holds complete versions side by side and a ``CURRENT`` file naming the live one::

    root/
      CURRENT                      -> "v-20261121T110000-1a2b3c"
      v-20261121T110000-1a2b3c/    the files, and manifest.json with the sha256 of every file below it
      v-20261120T090000-9f8e7d/    the previous version (kept as a fallback, older ones are deleted)

A save writes a new version into a temporary folder (``core.files.temporary_path``), renames it into
place, then swaps ``CURRENT`` with ``os.replace`` (atomic on POSIX). A crash at any point before that
last step leaves ``CURRENT`` naming the previous, complete version. Loading verifies the sha256 of every
file named in ``manifest.json``. A version may hold sub-folders, each with a manifest of its own
(`write_manifest`): the workspace's index set (``index.index_set``) publishes its vector index and its
BM25 index as the two sub-folders of one version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.files import temporary_path, write_atomic

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
VERSION_PREFIX = "v-"
REBUILD_HINT = "rebuild it with `marketsearch index --rebuild`"


class IndexLoadError(ValueError):
    """An index folder is missing, corrupt, or was built for another model."""


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, payload) -> None:
    """``payload`` as JSON at ``path``, synced to disk before it replaces what was there."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Sync every file under ``folder`` and write ``manifest.json`` with their sha256 (``files``, by path
    relative to ``folder``); return the manifest written."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path != folder / MANIFEST:
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(folder).as_posix()] = sha256_of(path)
    manifest = {**manifest, "files": files}
    write_json_atomic(folder / MANIFEST, manifest)
    for path in sorted({p.parent for p in folder.rglob("*")} | {folder}, reverse=True):
        _fsync_dir(path)
    return manifest


def read_manifest(folder: Path, what: str, *, verify: bool = True) -> dict:
    """``folder``'s manifest, after checking that every file it names is there with its sha256 (``verify``)."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise IndexLoadError(f"{what} at {folder} has no {MANIFEST}; {REBUILD_HINT}") from error
    except json.JSONDecodeError as error:
        raise IndexLoadError(f"{what} manifest {manifest_path} is not valid JSON ({error}); {REBUILD_HINT}") from error
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IndexLoadError(f"{what} manifest {manifest_path} lists no files; {REBUILD_HINT}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise IndexLoadError(f"{what} file {path} is missing; {REBUILD_HINT}")
        if not verify:
            continue
        actual = sha256_of(path)
        if actual != expected:
            raise IndexLoadError(
                f"{what} file {path} is corrupt: sha256 {actual[:12]}... does not match the manifest's "
                f"{expected[:12]}...; {REBUILD_HINT}"
            )
    return manifest


def new_version_name() -> str:
    return f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def atomic_version(root: str | os.PathLike, manifest: dict, version: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write a new version into; on success publish it as ``root``'s current.

    The caller writes its files (and sub-folders) into the yielded folder. On exit the manifest is written
    with every file's sha256 (`write_manifest`), the folder is renamed to a version name and ``CURRENT`` is
    swapped atomically. If the body raises, the temporary folder is removed and the previous version stays
    current. ``version`` names the new version (default: `new_version_name`); the manifest records it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version_name()
    tmp = temporary_path(root / version)
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp, {**manifest, "version": version})
        os.replace(tmp, root / version)
        _fsync_dir(root)
        previous = current_version(root)
        write_atomic(root / CURRENT, lambda tmp: tmp.write_text(version + "\n", encoding="utf-8"))
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("published %s as the current version of %s", version, root)
    _prune(root, keep={version, previous})


def current_version(root: Path) -> str | None:
    try:
        name = (Path(root) / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def _prune(root: Path, keep: set) -> None:
    for path in root.iterdir():
        if path.is_dir() and path.name not in keep and path.name.startswith(VERSION_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def open_version(root: str | os.PathLike, what: str, *, build_hint: str = "build it with `marketsearch index`"
                 ) -> tuple[Path, dict]:
    """Return ``(folder, manifest)`` of ``root``'s current version after verifying every checksum."""
    root = Path(root)
    version = current_version(root)
    if version is None:
        raise IndexLoadError(f"no {what} at {root} (missing {CURRENT} file); {build_hint}")
    folder = root / version
    return folder, read_manifest(folder, what)
