"""Prune the model store: per model, keep the newest versions (by publish time) and every protected one; delete
the rest with the store's own delete (model.json first: no reader ever sees half a version)."""

from __future__ import annotations

from typing import Any

from modelship.model_store.base import _version_sort_key
from modelship.retention.policy import Protections
from modelship.retention.report import Report

AREA = "model store"
UNPROTECTED = "not serving, promoted, quarantined, a rollback target or the desired state"


def prune(settings: Any, protections: Protections, report: Report, *, keep: int, store: Any = None) -> set[str] | None:
    """Delete the versions beyond the `keep` newest of each model that nothing protects. The manifest sha256 of
    every version left (in a dry run: that would be left), for the model cache; None when the store was unreadable."""
    if store is None:
        from modelship.model_store import open_store

        store = open_store(settings)
    remaining: set[str] = set()
    complete = True
    try:
        models = store.list_models()
    except Exception as exc:
        report.fail(AREA, repr(store), f"could not list the models: {exc}")
        return None
    for name in models:
        try:
            versions = store.list_versions(name)
        except Exception as exc:
            report.fail(AREA, f"{name} in {store!r}", f"could not list the versions: {exc}")
            complete = False
            continue
        # Newest first: publish time, then the version's natural order (v10 after v9) for one-second ties.
        versions.sort(key=lambda v: (v.get("created_at") or "", _version_sort_key(v["version"])), reverse=True)
        for rank, v in enumerate(versions):
            item = f"{name} {v['version']} (sha256 {v['sha256'][:12]}, published {v.get('created_at') or '?'})"
            reasons = protections.model_reasons(name, v["version"])
            if reasons:
                report.keep(AREA, item, "; ".join(reasons))
            elif rank < keep:
                report.keep(AREA, item, f"among the {keep} newest of {name}")
            else:
                why = f"not among the {keep} newest of {name}; {UNPROTECTED}"
                gone = report.remove(AREA, item, why, lambda n=name, ver=v["version"]: store.delete_version(n, ver))
                if gone or report.dry_run:
                    continue
            remaining.add(v["sha256"])
    kept = remaining if complete else None
    report.extra["model_sha256s_kept"] = sorted(kept) if kept is not None else None
    return kept
