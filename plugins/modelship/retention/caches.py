"""Prune the cache folders under MODELSHIP_CACHE: test environments (`testenv/<key>`: the record of when the
test environment image `modelship-testenv:<key>` was last used; the image goes with it) and wheelhouses
(`wheels/<hash>`) not used for MODELSHIP_CACHE_MAX_IDLE_DAYS (each use touches the entry's marker,
modelship.fs.mark_used), model cache entries (`models/<manifest sha256>`) of versions the store no longer
keeps, and the leftovers of writes and deletions that were cut off. Everything here is a cache: deleting it
costs time on the next use, never correctness.

An entry is renamed aside before it is deleted, so a reader finds the whole entry or none (the model cache
then downloads again); an entry used between the decision and the rename is put back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from modelship.fs import last_used
from modelship.retention.report import Kept, Report

AREA = "caches"
_SHA = re.compile(r"^[0-9a-f]{64}$")
LEFTOVER_AGE = 24 * 3600  # a staging folder this old belongs to a write that died (atomic_dir's `.<name>.….tmp`)


def size_of(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def remove_entry(entry: Path, seen_used: float | None = None) -> None:
    """Rename `entry` aside, then delete it. With `seen_used` (last_used when it was chosen): an entry used
    since is put back and kept (raises)."""
    aside = entry.parent / f".{entry.name}.deleting-{uuid.uuid4().hex[:8]}"
    os.rename(entry, aside)
    if seen_used is not None and last_used(aside) > seen_used:
        try:
            os.rename(aside, entry)
        except OSError:
            pass  # a new entry took its place meanwhile: this copy goes
        else:
            raise Kept("used again while it was being removed")
    shutil.rmtree(aside)


def remove_test_environment(settings: Any, entry: Path, seen_used: float | None = None) -> None:
    """Remove a test environment's record (as remove_entry) and then its image on the engine; again after a
    failure, the record is gone already and only the image is left to remove."""
    from modelship import apptests
    from modelship.retention.engine import engine_api

    if entry.exists():
        remove_entry(entry, seen_used)
    apptests.remove_environment(engine_api(settings), entry.name)


def _leftover(entry: Path, now: float) -> str | None:
    """Why `entry` is the leftover of an interrupted write or deletion, or None."""
    if not entry.name.startswith("."):
        return None
    if ".deleting-" in entry.name:
        return "the leftover of a deletion that was cut off"
    with contextlib.suppress(OSError):
        if entry.name.endswith(".tmp") and now - entry.stat().st_mtime > LEFTOVER_AGE:
            return "the leftover of a write that died (a staging folder over a day old)"
    return None


def prune(settings: Any, report: Report, *, max_idle_days: float, model_sha256s: set[str] | None) -> None:
    root = Path(settings.cache_dir)
    now = time.time()
    idle = max_idle_days * 86400
    for folder, what in (("testenv", "test environment"), ("wheels", "wheelhouse")):
        for entry in sorted((root / folder).iterdir()) if (root / folder).is_dir() else []:
            item = f"{what} {entry}"
            leftover = _leftover(entry, now)
            if leftover:
                report.remove(AREA, item, leftover, lambda e=entry: shutil.rmtree(e), size=size_of(entry))
                continue
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            used = last_used(entry)
            days = (now - used) / 86400
            if now - used <= idle:
                report.keep(AREA, item, f"used {days:.1f} days ago (kept while used within {max_idle_days:g})")
            elif folder == "testenv":
                report.remove(AREA, f"{item} (and its image)", f"not used for {days:.0f} days (more than "
                              f"{max_idle_days:g})", lambda e=entry, u=used: remove_test_environment(settings, e, u),
                              size=size_of(entry))  # fmt: skip
            else:
                report.remove(AREA, item, f"not used for {days:.0f} days (more than {max_idle_days:g})",
                              lambda e=entry, u=used: remove_entry(e, u), size=size_of(entry))  # fmt: skip
    models = root / "models"
    if not models.is_dir():
        return
    if model_sha256s is None:
        report.note("caches: the model cache was not pruned: the store's versions could not be read")
        return
    for entry in sorted(models.iterdir()):
        item = f"model cache {entry}"
        leftover = _leftover(entry, now)
        if leftover:
            report.remove(AREA, item, leftover, lambda e=entry: shutil.rmtree(e), size=size_of(entry))
        elif _SHA.match(entry.name) and entry.is_dir():
            if entry.name in model_sha256s:
                report.keep(AREA, item, "a version the model store keeps")
            else:
                report.remove(AREA, item, "its model version is no longer kept in the store (it is fetched again "
                              "if ever wanted)", lambda e=entry: remove_entry(e), size=size_of(entry))  # fmt: skip
