"""Copies that cost nothing where they can: hard links (model packages and wheelhouses are hundreds of MB).

A hard link shares the bytes with the original, so never write into a linked file in place: replace it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
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
