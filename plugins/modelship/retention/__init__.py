"""Retention: what only grew (registry images, model versions, the engine's images, cache folders) is pruned
by one policy, from `modelship gc` and the weekly `maintenance` DAG.

Keep the N newest (MODELSHIP_KEEP_IMAGES, MODELSHIP_KEEP_MODEL_VERSIONS) and ALWAYS whatever serves, is
promoted, is quarantined, is a rollback target or is the desired state (policy: where a source cannot be asked,
more is kept, and the run says so). Every deletion is logged with why nothing kept it; a dry run lists without
deleting; a failure on one item does not stop the rest and is reported at the end.

    policy    the protections, gathered: targets, aliases, history, quarantine, desired state
    report    what was deleted, kept (and why), or failed
    registry  the app repository's manifests, then the registry's garbage collection where configured
    store     model versions (the store's delete: model.json first)
    engine    the app images built on the engine, dangling ones, the dangling build cache
    caches    test environments and wheelhouses unused for long, model cache entries of deleted versions
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelship.lineage import DeploymentRecord, ImageEvent, Quarantine
from modelship.retention import caches, engine, registry, store
from modelship.retention.policy import Protections, gather
from modelship.retention.report import Outcome, PruneFailed, Report
from modelship.settings import Settings

__all__ = [
    "Outcome", "Protections", "PruneFailed", "Report", "gather", "prune_caches", "prune_engine",
    "prune_model_store", "prune_registry", "protect", "run",
]  # fmt: skip


def _keep(value: int, setting: str) -> int:
    if value < 1:
        raise ValueError(f"{setting} is {value}: at least the newest one is always kept (a ci run may be using it)")
    return value


def protect(
    images: Sequence[ImageEvent] | None,
    quarantines: Sequence[Quarantine] | None,
    records: Sequence[DeploymentRecord] | None,
    unavailable: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The maintenance DAG's first step: what must stay and why, as JSON for the pruning steps."""
    settings = settings or Settings.get()

    def only(found: Sequence[Any] | None, kind: type) -> list[Any] | None:
        return None if found is None else [item for item in found if isinstance(item, kind)]

    return gather(settings, images=only(images, ImageEvent), quarantines=only(quarantines, Quarantine),
                  records=only(records, DeploymentRecord), unavailable=unavailable).as_dict()  # fmt: skip


def _pruned(dry_run: bool, prune: Callable[[Settings, Report], object]) -> dict[str, Any]:
    """One area pruned on its own (a maintenance DAG step): a report of its own, finished as JSON."""
    report = Report(dry_run)
    prune(Settings.get(), report)
    return report.finish()


def prune_registry(protections: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
    return _pruned(dry_run, lambda settings, report: registry.prune(
        settings, Protections.from_dict(protections), report,
        keep=_keep(settings.keep_images, "MODELSHIP_KEEP_IMAGES")))  # fmt: skip


def prune_model_store(protections: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
    return _pruned(dry_run, lambda settings, report: store.prune(
        settings, Protections.from_dict(protections), report,
        keep=_keep(settings.keep_model_versions, "MODELSHIP_KEEP_MODEL_VERSIONS")))  # fmt: skip


def prune_engine(protections: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
    return _pruned(dry_run, lambda settings, report: engine.prune(
        settings, Protections.from_dict(protections), report,
        keep=_keep(settings.keep_images, "MODELSHIP_KEEP_IMAGES"), grace_hours=settings.gc_grace_hours))  # fmt: skip


def prune_caches(store_report: Mapping[str, Any] | None, dry_run: bool = False) -> dict[str, Any]:
    """The cache folders; the model cache keeps what the store kept (the model-store step's report), else what
    the store holds now."""
    kept = (store_report or {}).get("model_sha256s_kept")

    def prune(settings: Settings, report: Report) -> None:
        shas = set(kept) if kept is not None else _store_sha256s(settings, report)
        caches.prune(settings, report, max_idle_days=settings.cache_max_idle_days, model_sha256s=shas)

    return _pruned(dry_run, prune)


def _store_sha256s(settings: Settings, report: Report) -> set[str] | None:
    from modelship.model_store import open_store

    try:
        opened = open_store(settings)
        return {v["sha256"] for name in opened.list_models() for v in opened.list_versions(name)}
    except Exception as exc:
        report.note(f"caches: the model store could not be read ({exc})")
        return None


def run(
    *,
    images: Sequence[ImageEvent] | None,
    quarantines: Sequence[Quarantine] | None,
    records: Sequence[DeploymentRecord] | None,
    unavailable: Mapping[str, str] | None = None,
    dry_run: bool = False,
    keep: int | None = None,
    settings: Settings | None = None,
) -> Report:
    """Everything `modelship gc` does, in one report: protections once, then every area (none stops another).
    `keep` overrides both MODELSHIP_KEEP_IMAGES and MODELSHIP_KEEP_MODEL_VERSIONS."""
    settings = settings or Settings.get()
    keep_images = _keep(keep if keep is not None else settings.keep_images, "keep (images)")
    keep_models = _keep(keep if keep is not None else settings.keep_model_versions, "keep (model versions)")
    protections = gather(settings, images=images, quarantines=quarantines, records=records, unavailable=unavailable)
    report = Report(dry_run)
    for line in [*protections.blocked, *protections.notes]:
        report.note(line)
    registry.prune(settings, protections, report, keep=keep_images)
    shas = store.prune(settings, protections, report, keep=keep_models)
    engine.prune(settings, protections, report, keep=keep_images, grace_hours=settings.gc_grace_hours)
    caches.prune(settings, report, max_idle_days=settings.cache_max_idle_days, model_sha256s=shas)
    return report
