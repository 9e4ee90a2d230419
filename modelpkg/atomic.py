"""Stage, then rename into place: a reader sees the old thing or the new thing, never half of either.

One implementation for every writer in modelship: model packages (training, fetch, the model cache), the
app's test environments, checkouts, wheelhouses, image tarballs, and files holding secrets (created with
their final mode, so there is no moment where another user can read them).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(staging: Path, dest: Path) -> None:
    """Put the finished folder at dest in one step; an existing dest is swapped out, then removed."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(staging, dest)
        return
    if dest.is_symlink() or not dest.is_dir():
        raise FileExistsError(f"{dest}: exists and is not a directory; refusing to replace it")
    if _exchange(staging, dest):
        shutil.rmtree(staging)  # now holds the old contents
        return
    # No renameat2 (not Linux): move the old folder aside first; dest is briefly absent.
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, aside / "old")
    os.rename(staging, dest)
    shutil.rmtree(aside)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str], *, keep_existing: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; when the block ends without error it becomes ``dest``.

    keep_existing: a ``dest`` that exists by then (a concurrent writer finished first, with the same content
    by construction: caches keyed by content) is kept and the staging folder dropped; otherwise an existing
    ``dest`` is replaced atomically. On any error the staging folder is removed and nothing changes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(staging, mode)  # mkdtemp makes 0700; e.g. a non-root serving user must read a model
        yield staging
        if keep_existing and dest.is_dir():
            shutil.rmtree(staging)
            return
        try:
            replace_dir(staging, dest)
        except OSError as exc:
            if not (keep_existing and exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and dest.is_dir()):
                raise
            shutil.rmtree(staging)  # lost the race to a concurrent writer between the check and the rename
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (created empty, already with ``mode``); write it any way you
    like; when the block ends without error it replaces ``dest``. On error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, mode)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(dest: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``dest`` atomically and durably (fsync); the file has ``mode`` from its creation,
    so a secret written with 0o600 is never readable by anyone else, not even for a moment."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(dest, mode=mode) as tmp, open(tmp, "wb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(dest)
