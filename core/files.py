"""Atomic file and folder writes: a crash never leaves half a file in place.

Work in progress is written beside its target under a temporary name that carries the writer's pid,
``.<target name>.<pid>-<token>.tmp``, and moved into place with ``os.replace``. A process killed half-way
leaves such a name behind; `remove_stale_temporaries` removes the ones whose writer is no longer running
(and puts back a folder that a killed `replace_dir` had moved aside).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<token>\w+)\.tmp$")
# What older versions wrote without a pid: `.tmp-<version>` index folders, `.<name>.<random>.tmp` files.
LEGACY_TEMPORARY_NAME = re.compile(r"^\.(tmp-.+|.+\.tmp)$")
BACKUP_TOKEN = "old"  # `replace_dir` moves the previous folder aside under this token until the swap is done


def temporary_path(target: str | os.PathLike, token: str | None = None) -> Path:
    """A name beside ``target`` for work in progress: ``.<name>.<pid>-<token>.tmp`` (random token by default)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{token or uuid.uuid4().hex[:12]}.tmp")


def make_temporary_dir(target: str | os.PathLike) -> Path:
    """Create and return an empty temporary folder beside ``target`` (see `temporary_path`)."""
    path = temporary_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    return path


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file (see `write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, swapping out any previous ``target``.

    Two renames (POSIX cannot replace a non-empty folder in one): the previous folder is moved aside under
    a temporary name first. A process killed between the two leaves no ``target``; the next
    `remove_stale_temporaries` puts the previous folder back.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = temporary_path(target, BACKUP_TOKEN)
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_dir_atomic(source: Path, target: Path) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(target)
    try:
        shutil.copytree(source, staging)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def pid_is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine. True where that cannot be told (not POSIX)."""
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def process_start_time() -> float | None:
    """When this process started (epoch seconds), from /proc; None where /proc is not there."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the parenthesised command name
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _is_stale(entry: Path, started: float | None) -> tuple[bool, re.Match | None]:
    match = TEMPORARY_NAME.match(entry.name)
    if match is not None:
        return not pid_is_running(int(match["pid"])), match
    if LEGACY_TEMPORARY_NAME.match(entry.name) and started is not None:
        try:
            return entry.lstat().st_mtime < started, None
        except FileNotFoundError:
            return False, None
    return False, None


def remove_stale_temporaries(folders: Iterable[str | os.PathLike]) -> list[str]:
    """Remove what killed writers left in ``folders`` (not recursive); return one line per thing done.

    A temporary (`temporary_path`) is stale when the process named in it is no longer running; one without a
    pid (written by an older version) when it is older than this process. A folder that `replace_dir` had
    moved aside is put back when its replacement never arrived, otherwise removed. Anything that cannot be
    removed (a read-only workspace) is logged and left.
    """
    started = process_start_time()
    done = []
    for folder in folders:
        try:
            entries = sorted(Path(folder).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            logger.warning("could not look for stale temporaries in %s: %s", folder, error)
            continue
        for entry in entries:
            stale, match = _is_stale(entry, started)
            if not stale:
                continue
            try:
                target = entry.with_name(match["target"]) if match is not None else None
                if match is not None and match["token"] == BACKUP_TOKEN and not target.exists():
                    os.replace(entry, target)
                    done.append(f"restored {target} (a replacement was interrupted)")
                elif entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                    done.append(f"removed {entry}")
                else:
                    entry.unlink()
                    done.append(f"removed {entry}")
            except FileNotFoundError:
                continue  # another process cleaned it first
            except OSError as error:
                logger.warning("could not remove the stale temporary %s: %s", entry, error)
    for line in done:
        logger.info("stale temporary from an interrupted run: %s", line)
    return done
