"""Verified model packages kept on local disk, keyed by the manifest sha256 (the version's identity).

A repeat fetch of an unchanged model transfers only the manifest: the files are hard-linked from here and
verified again before they are used, so a cache file edited through a link is caught (and the entry
dropped) rather than served.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from modelpkg.atomic import atomic_dir
from modelpkg.manifest import MANIFEST, ManifestError, verify_package
from modelship.fs import link_tree

log = logging.getLogger("modelship.model_store")


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def fill(self, sha: str, into: Path) -> bool:
        """Link the verified package `sha` into the empty folder `into`; False when not cached (or damaged)."""
        entry = self.root / sha
        if not (entry / MANIFEST).is_file():
            return False
        try:
            link_tree(entry, into, ignore=None)
            verify_package(into)
            if hashlib.sha256((into / MANIFEST).read_bytes()).hexdigest() != sha:
                raise ManifestError(f"cached {MANIFEST} does not hash to {sha}")
        except (OSError, ManifestError) as exc:
            log.warning("model cache entry %s is damaged (%s); dropping it and downloading again", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            for child in into.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return False
        return True

    def add(self, sha: str, package: Path) -> None:
        """Keep a verified package (best effort: a full disk or a racing fetch must not fail the fetch)."""
        entry = self.root / sha
        if entry.exists():
            return
        try:
            with atomic_dir(entry, keep_existing=True) as staging:
                link_tree(package, staging, ignore=None)
        except OSError as exc:
            log.warning("could not add model %s to the cache %s: %s", sha, self.root, exc)
