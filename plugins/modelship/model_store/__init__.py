"""The model store: published model versions, aliases that point at them, and verified fetches.

One interface, two backends sharing the same layout and the same logic (only the storage primitives
differ): a folder (``local:/abs/path``) and an Azure Blob container (``wasb:<container>``, through
``WasbHook``, so Azurite and real Azure work alike)::

    <name>/versions/<version>/<files...>     files first, model.json LAST
    <name>/aliases/<alias>.json              {"version", "manifest_sha256", "promoted_at", "previous"}

A version exists only once its model.json exists: readers ignore a folder without one (a publish that
died half-way). Versions are immutable: publish refuses to overwrite one. Deleting one (modelship.retention)
is the mirror image: model.json FIRST, so the version vanishes for every reader at once, then its files;
never while an alias names it. An alias moves only by compare-and-swap (ETag on Azure, a lock file on disk),
so of two concurrent promotions one wins and the other raises PromotionConflict instead of silently undoing
the first.

fetch() verifies every sha256 against model.json before the package appears at its destination, and
keeps verified packages in a local cache keyed by the manifest sha256 (the version's identity): a repeat
fetch of an unchanged model transfers only the manifest.

Every blob call is retried with exponential backoff on transient failures (connection refused, timeouts,
5xx), never on answers that retrying cannot change (404, 409, 412).

    errors   what the store refuses (verdicts) or cannot do (StoreUnavailable)
    base     the logic, once: keys, manifests, aliases, publish, promote, fetch
    cache    verified packages on local disk, by manifest sha256
    local    the folder backend          blob   the Azure Blob backend (WasbHook)
"""

from __future__ import annotations

import os
from pathlib import Path

from modelship.model_store.base import ModelStore, StoreStats
from modelship.model_store.blob import BlobModelStore
from modelship.model_store.errors import (
    ANY,
    IntegrityError,
    InvalidName,
    ModelNotFound,
    ModelStoreError,
    PromotionConflict,
    StoreUnavailable,
    VersionExists,
)
from modelship.model_store.local import LocalModelStore
from modelship.retry import DEFAULT, Policy
from modelship.settings import Settings

__all__ = [
    "ANY", "BlobModelStore", "IntegrityError", "InvalidName", "LocalModelStore", "ModelNotFound", "ModelStore",
    "ModelStoreError", "PromotionConflict", "StoreStats", "StoreUnavailable", "VersionExists", "open_store",
]  # fmt: skip


def open_store(
    settings: Settings | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retry_policy: Policy = DEFAULT,
) -> ModelStore:
    """The store named by settings.model_store: "local:/abs/path" or "wasb:<container>".

    cache_dir: where verified packages are cached (default settings.cache_dir / "models").
    """
    settings = settings or Settings.get()
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir / "models"
    scheme, _, location = settings.model_store.partition(":")
    if scheme == "local" and location:
        return LocalModelStore(location, cache_dir=cache, retry_policy=retry_policy)
    if scheme == "wasb" and location:
        return BlobModelStore(location, settings.wasb_conn_id, cache_dir=cache, retry_policy=retry_policy)
    raise ValueError(
        f"model store {settings.model_store!r} (MODELSHIP_MODEL_STORE) is not understood: "
        "use local:/absolute/path or wasb:<container>"
    )
