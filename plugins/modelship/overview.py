"""What serves, what should, and what happened: the one read behind `modelship status | history | image
quarantined` and the Airflow UI's Deployments page (modelship.ui).

The targets answer what serves from their own state (container labels, Deployment annotations). Everything
else is an Asset event in Airflow's metadata, read through its REST API (modelship.airflow_api) as whoever
holds the client's token: the CLI's user, or the person looking at the page, so Airflow's permissions
decide what each may see. Every event keeps the run that emitted it (`Sourced`), so each fact can link to
the ci, release or model_refresh run behind it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from modelship import desired, history
from modelship.lineage import Artifact, DeploymentRecord, ImageEvent, ModelEvent, Quarantine, from_xcom

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Artifact)
TARGETS = ("docker", "kubernetes")
STATUS_TIMEOUT = 15.0  # seconds a target may take to say what serves before the page says it cannot


@dataclass(frozen=True)
class Sourced(Generic[A]):
    """An artifact with the run that emitted its Asset event ("" for one created through the REST API)."""

    artifact: A
    dag_id: str = ""
    run_id: str = ""
    at: str = ""  # when the event was recorded (ISO 8601)

    @property
    def run(self) -> dict[str, str] | None:
        return run_ref(self.dag_id, self.run_id)


def run_ref(dag_id: str, run_id: str) -> dict[str, str] | None:
    return {"dag_id": dag_id, "run_id": run_id} if dag_id and run_id else None


# --- the Asset events --------------------------------------------------------------------------------------


def sourced(api: Any, asset: str, kind: type[A]) -> list[Sourced[A]]:
    """The events of `asset` whose extra is a `kind`, oldest first, each with the run that emitted it."""
    found = []
    for event in api.asset_events(asset):
        item = from_xcom(dict(event.extra or {}))
        if isinstance(item, kind):
            at = event.timestamp.isoformat() if isinstance(event.timestamp, datetime) else str(event.timestamp or "")
            found.append(Sourced(item, event.source_dag_id or "", event.source_run_id or "", at))
    return found


def image_events(api: Any) -> list[ImageEvent]:
    return [s.artifact for s in sourced(api, "image", ImageEvent)]


def quarantine_events(api: Any) -> list[Quarantine]:
    return [s.artifact for s in sourced(api, "quarantine", Quarantine)]


def deployment_records(api: Any) -> list[DeploymentRecord]:
    return [s.artifact for s in sourced(api, "deployments", DeploymentRecord)]


# --- what serves, and is it what should --------------------------------------------------------------------


def compare(want: desired.Desired, serving_digest: str | None) -> dict[str, Any]:
    """Whether `serving_digest` is the desired state `want`, and if not why: {in_desired_state, why, image…}."""
    out: dict[str, Any] = {
        "model_version": want.model_version,
        "commit": want.commit,
        "image": want.image.ref if want.image else None,
        "image_digest": want.image.digest if want.image else None,
        "quarantined": want.quarantine is not None,
    }
    if want.image is None:
        return {**out, "in_desired_state": False, "why": f"not built yet: {want.reason}"}
    if want.quarantine is not None:
        serves = "what serves is the last good build" if serving_digest else "nothing serves"
        return {**out, "in_desired_state": False,
                "why": f"quarantined: {desired.quarantine_notice(want.quarantine)}; {serves}"}  # fmt: skip
    if want.image.digest == serving_digest:
        return {**out, "in_desired_state": True, "why": want.reason}
    return {**out, "in_desired_state": False,
            "why": f"release pending: {want.describe()} is not deployed yet (the nightly release, or trigger release)"}


def unknown(exc: BaseException) -> dict[str, Any]:
    """The desired state when Airflow, git or the model store cannot be asked: status still says what serves."""
    return {"in_desired_state": None, "why": f"desired state unknown: {exc}"}


def desired_state(serving_digest: str | None, api: Any) -> dict[str, Any]:
    try:
        want = desired.current(image_events(api), quarantine_events(api))
    except Exception as exc:
        return unknown(exc)
    return compare(want, serving_digest)


def serving_digest(status: dict[str, Any]) -> str | None:
    return status.get("image_digest") if status.get("serving") else None


def health(status: dict[str, Any]) -> tuple[bool, str]:
    """(healthy, in words) from a target's status: the container's health check, or the ready replicas."""
    if not status.get("serving"):
        return False, "nothing serving"
    if status.get("health"):
        return status["health"] == "healthy", str(status["health"])
    if status.get("replicas"):
        ready, _, wanted = str(status["replicas"]).partition("/")
        return ready == wanted, f"{status['replicas']} replicas ready"
    return True, "running"


def target_status(name: str, settings: Any, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """What serves on target `name`, or why it cannot be told ({"reachable": False, "error": …}): a cluster
    with no connection, or one that does not answer within `timeout`, must not hold up the rest."""
    from modelship.deploy import get_target

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"status-{name}")
    try:
        status = pool.submit(lambda: get_target(name, settings).status()).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return {"target": name, "reachable": False, "serving": False,
                "error": f"the {name} target did not answer within {timeout:.0f}s"}  # fmt: skip
    except Exception as exc:
        return {"target": name, "reachable": False, "serving": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    healthy, words = health(status)
    return {**status, "reachable": True, "healthy": healthy, "health": words}


# --- the whole picture, for the page ------------------------------------------------------------------------


def _section(errors: dict[str, str], name: str, read: Callable[[], Any], empty: Any) -> Any:
    """One section of the page; its failure is named in `errors` and the rest still shows."""
    try:
        return read()
    except Exception as exc:
        log.warning("deployments page: cannot read %s: %s", name, exc)
        errors[name] = f"{type(exc).__name__}: {exc}"
        return empty


def overview(api: Any, settings: Any = None, targets: Sequence[str] = TARGETS) -> dict[str, Any]:
    """Per target what serves, healthy or not, and whether it is the desired state (and why not); the
    desired state; every deployment attempt (newest first); the quarantined images; the model versions with
    their accuracy and aliases. Every fact carries the run behind it (`run`, `ci_run`, `promoted_by`)."""
    from modelship.settings import Settings

    settings = settings or Settings.get()
    errors: dict[str, str] = {}
    images = _section(errors, "image events", lambda: sourced(api, "image", ImageEvent), [])
    quarantines = _section(errors, "quarantines", lambda: sourced(api, "quarantine", Quarantine), [])
    records = _section(errors, "deployment records", lambda: sourced(api, "deployments", DeploymentRecord), [])
    promoted = _section(errors, "model events", lambda: sourced(api, "model", ModelEvent), [])
    held = desired.in_quarantine(q.artifact for q in quarantines)
    built_by = ci_runs(images)

    want = _section(errors, "desired state",
                    lambda: desired.current([s.artifact for s in images], [q.artifact for q in quarantines],
                                            settings), None)  # fmt: skip
    timeline = history.ordered(r.artifact for r in records)
    rows = [_record_row(r, held, built_by) for r in reversed(timeline)]
    out_targets = []
    for name in targets:
        status = target_status(name, settings)
        digest = serving_digest(status)
        mine = [r for r in timeline if r.target == name and r.serving_after.get("image_digest") == digest]
        verdict = (compare(want, digest) if want is not None else unknown(RuntimeError(errors["desired state"])))
        out_targets.append({
            "name": name, "status": status, "desired": verdict if status["reachable"] else None,
            "deployed_by": run_ref(mine[-1].dag_id, mine[-1].run_id) if digest and mine else None,
            "ci_run": built_by.get(digest or ""),
        })  # fmt: skip
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "targets": out_targets,
        "desired": _desired_row(want, built_by) if want is not None else None,
        "history": rows,
        "quarantined": [_quarantine_row(q) for q in quarantines if held.get(q.artifact.digest) == q.artifact],
        "models": _section(errors, "model versions", lambda: model_versions(settings, promoted), []),
        "errors": errors,
    }


def ci_runs(images: Iterable[Sourced[ImageEvent]]) -> dict[str, dict[str, str] | None]:
    """digest → the ci run that built and pushed it (else the first that announced it)."""
    runs: dict[str, dict[str, str] | None] = {}
    for event in images:
        if event.run and (event.artifact.rebuilt or event.artifact.digest not in runs):
            runs[event.artifact.digest] = event.run
    return runs


def _desired_row(want: desired.Desired, built_by: dict[str, dict[str, str] | None]) -> dict[str, Any]:
    return {
        "model_name": want.model_name, "model_version": want.model_version, "commit": want.commit,
        "image": want.image.ref if want.image else None, "image_digest": want.image.digest if want.image else None,
        "reason": want.reason, "deployable": want.deployable,
        "quarantine": desired.quarantine_notice(want.quarantine) if want.quarantine else None,
        "ci_run": built_by.get(want.image.digest) if want.image else None,
    }  # fmt: skip


def _record_row(
    record: DeploymentRecord, held: dict[str, Quarantine], built_by: dict[str, dict[str, str] | None]
) -> dict[str, Any]:
    return {
        **record.as_dict(),
        "run": run_ref(record.dag_id, record.run_id),
        "ci_run": built_by.get(record.image_digest),
        "quarantined": record.image_digest in held,
        "deployable": bool(_IMAGE_BY_DIGEST.match(record.image or "")),
    }


_IMAGE_BY_DIGEST = re.compile(r"^[^/\s]+/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$")


def _quarantine_row(q: Sourced[Quarantine]) -> dict[str, Any]:
    """A quarantine in force, with the release run whose failure put it there."""
    return {**q.artifact.as_dict(), "notice": desired.quarantine_notice(q.artifact), "run": q.run}


def model_versions(settings: Any, promoted: Iterable[Sourced[ModelEvent]] = ()) -> list[dict[str, Any]]:
    """Every published version of the model, newest first: accuracy, which aliases name it, and the
    model_refresh run that last promoted it (None when it was promoted outside Airflow, or never)."""
    from modelship.model_store import open_store

    store = open_store(settings)
    name = settings.model_name
    aliases = store.list_aliases(name)
    by_version: dict[str, list[str]] = {}
    for alias, record in aliases.items():
        by_version.setdefault(str(record.get("version")), []).append(alias)
    last_promotion = {p.artifact.version: p.run for p in promoted if p.artifact.name == name}
    rows = []
    for version in reversed(store.list_versions(name)):
        rows.append({
            "name": name, "version": version["version"], "sha256": version["sha256"],
            "accuracy": (version.get("metrics") or {}).get("accuracy"), "created_at": version.get("created_at"),
            "aliases": sorted(by_version.get(version["version"], [])),
            "promoted_by": last_promotion.get(version["version"]),
        })  # fmt: skip
    return rows
