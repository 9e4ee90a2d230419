"""Copies that cost nothing where they can: hard links (model packages and wheelhouses are hundreds of MB).

A hard link shares the bytes with the original, so never write into a linked file in place: replace it.
Also what cache entries share: when one was last used, and a lock file processes take turns on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

# Touched inside a cache entry (a test environment, a wheelhouse) each time it is used: retention removes
# entries by when they were last used, not when they were made. Never copied into a build context.
USED_MARKER = ".last-used"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", USED_MARKER)


def mark_used(entry: Path) -> None:
    """Record that the cache entry `entry` (a folder) is used now (best effort: a read-only cache still works)."""
    with contextlib.suppress(OSError):
        (Path(entry) / USED_MARKER).touch()


def last_used(entry: Path) -> float:
    """When `entry` was last used (its marker's mtime; an entry from before markers: its own mtime)."""
    for path in (Path(entry) / USED_MARKER, Path(entry)):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing; its folder must exist) for the block; other
    processes taking it wait. `on_wait` is called once when the lock is held elsewhere, before waiting. The lock
    goes when the file is closed, however the block ends (a killed process included)."""
    with open(path, "a") as handle:
        if on_wait is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
    """Hard-link src to dst, or copy it where linking is refused (EXDEV: another filesystem, EPERM:
    protected_hardlinks, EMLINK); True when linked."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        return False
    return True


def link_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    ignore: Callable[[str, list[str]], set[str]] | None = IGNORED,
    counts: dict[str, int] | None = None,
    symlinks: bool = False,
) -> Path:
    """Copy the tree src to dst (which may exist: files already there are kept) by linking each file.

    symlinks=True copies symbolic links as links. Use it for every tree a commit controls (a checkout): a
    link to /any/host/file would otherwise be followed, and that file's bytes copied (or hard-linked) in.
    """

    def copy(source: str, target: str) -> str:
        if not os.path.exists(target):
            linked = link_or_copy(source, target)
            if counts is not None:
                counts["linked" if linked else "copied"] = counts.get("linked" if linked else "copied", 0) + 1
        return target

    shutil.copytree(src, dst, symlinks=symlinks, ignore=ignore, copy_function=copy, dirs_exist_ok=True)
    return Path(dst)
