"""Where a rollout stands and how to undo it, by the same rules as kubectl (pure logic on API objects: tested
without a cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelship.lineage import ANN_DEPLOYED_AT

if TYPE_CHECKING:
    from kubernetes.client import V1Deployment, V1Pod, V1ReplicaSet

REVISION = "deployment.kubernetes.io/revision"
# What `kubectl rollout undo` leaves out when it copies a ReplicaSet's annotations back to the Deployment.
_UNDO_SKIPPED_ANNOTATIONS = frozenset({
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "kubectl.kubernetes.io/last-applied-configuration",
    "deprecated.deployment.rollback.to",
})  # fmt: skip



class RolloutFailed(Exception):
    """A rollout did not complete; the message carries the pods' states and warning events."""


class RollbackFailed(Exception):
    """There is no earlier revision to return to, or returning to it did not complete."""


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool  # the controller itself gave up (progress deadline exceeded)
    reason: str


def rollout_state(deployment: V1Deployment, generation: int) -> RolloutState:
    """Where a rollout stands, by the same rules as `kubectl rollout status`."""
    spec_replicas = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    status = deployment.status
    observed = status.observed_generation or 0
    if observed < generation:
        return RolloutState(False, False, f"controller has observed generation {observed} of {generation}")
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"progress deadline exceeded: {condition.message}")
    updated = status.updated_replicas or 0
    replicas = status.replicas or 0
    available = status.available_replicas or 0
    unavailable = status.unavailable_replicas or 0
    if updated < spec_replicas:
        return RolloutState(False, False, f"{updated} of {spec_replicas} replicas updated")
    if replicas > updated:
        return RolloutState(False, False, f"{replicas - updated} old replicas pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas available")
    if unavailable:
        return RolloutState(False, False, f"{unavailable} replicas unavailable")
    return RolloutState(True, False, f"{available} of {spec_replicas} replicas updated and available")


# A container of a new revision in one of these states will not come up by waiting longer: a verdict now,
# rather than at the progress deadline (minutes in which a crash-looping pod is all that changes).
HOPELESS_WAITING = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})  # fmt: skip
# Restarts of one container after which its revision is crash-looping, whatever state it shows right now.
CRASH_RESTARTS = 2
# Beyond the app's own start-up budget (its probes), slack for scheduling, the image pull and the kubelet.
STARTUP_SLACK = 30.0


def startup_budget(template_spec: Any, min_ready_seconds: int | None = None) -> float:
    """Seconds a pod of this template may take to become ready, by its own probes: the startup probe's whole
    allowance, then the readiness probe's, then minReadySeconds, plus slack."""
    budget = float(min_ready_seconds or 0) + STARTUP_SLACK
    for container in template_spec.containers or []:
        longest = 0.0
        for probe in (container.startup_probe, container.readiness_probe):
            if probe is not None:
                period = probe.period_seconds or 10
                longest += (probe.initial_delay_seconds or 0) + period * (probe.failure_threshold or 3)
        budget = max(budget, longest + float(min_ready_seconds or 0) + STARTUP_SLACK)
    return budget


def hopeless(pods: Sequence[V1Pod], budget: float, now: datetime | None = None) -> str | None:
    """Why pods of a new revision will never be ready, if that is already certain (else None): a container
    waiting in a hopeless state, restarting again and again, or a pod still not ready past `budget` seconds."""
    now = now or datetime.now(UTC)
    for pod in pods:
        name = pod.metadata.name
        for cs in pod.status.container_statuses or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in HOPELESS_WAITING:
                return f"pod {name}: {cs.name} {waiting.reason}" + (f": {waiting.message}" if waiting.message else "")
            if (cs.restart_count or 0) >= CRASH_RESTARTS:
                last = cs.last_state.terminated if cs.last_state else None
                code = f", last exit {last.exit_code} ({last.reason})" if last else ""
                return f"pod {name}: {cs.name} restarted {cs.restart_count} times{code}"
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        started = pod.status.start_time or pod.metadata.creation_timestamp
        if not ready and started is not None and (now - started).total_seconds() > budget:
            waited = int((now - started).total_seconds())
            return f"pod {name}: not ready {waited}s after it started (its start-up budget is {budget:.0f}s)"
    return None


def revision_of(obj: Any) -> int:
    """The deployment.kubernetes.io/revision of a Deployment or ReplicaSet (0 when it has none yet)."""
    try:
        return int((obj.metadata.annotations or {}).get(REVISION, 0))
    except ValueError:
        return 0


def owned_by(obj: Any, owner_uid: str) -> bool:
    return any(ref.uid == owner_uid for ref in obj.metadata.owner_references or [])


def previous_replica_set(replica_sets: Iterable[V1ReplicaSet], current_revision: int) -> V1ReplicaSet | None:
    """The ReplicaSet `kubectl rollout undo` would return to: the highest revision below the current one.

    Pass only the Deployment's own ReplicaSets (``owned_by``). Rolling back re-uses the old ReplicaSet and
    gives it a new, highest revision, so "previous" is always below "current", also after an undo.
    """
    older = [rs for rs in replica_sets if 0 < revision_of(rs) < current_revision]
    return max(older, key=revision_of, default=None)


def undo_patch(replica_set: V1ReplicaSet, sanitize: Callable[[Any], Any], now: str) -> list[dict]:
    """The JSON patch that puts a ReplicaSet's pod template and annotations back on its Deployment."""
    template = sanitize(replica_set.spec.template)
    template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
    kept = (replica_set.metadata.annotations or {}).items()
    annotations = {k: v for k, v in kept if k not in _UNDO_SKIPPED_ANNOTATIONS}
    annotations[ANN_DEPLOYED_AT] = now
    # "add" replaces an existing member and creates a missing one.
    return [
        {"op": "add", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]


def summarize_pods(pods: Sequence[V1Pod], revisions: Mapping[str, int], events: Sequence[Any]) -> str:
    """Why pods are not serving, one line a pod plus recent warning events (pull errors, probe failures).

    ``revisions`` maps ReplicaSet name → revision, ``events`` are core/v1 Events of the namespace.
    """
    lines = []
    names = set()
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        names.add(pod.metadata.name)
        owner = next((r.name for r in pod.metadata.owner_references or [] if r.kind == "ReplicaSet"), "")
        where = f"revision {revisions[owner]}" if owner in revisions else "revision ?"
        phase = pod.status.phase or "Unknown"
        if pod.metadata.deletion_timestamp:
            phase += ", terminating"
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        parts = [f"pod {pod.metadata.name} ({where}, {phase}, {'ready' if ready else 'not ready'})"]
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.waiting:
                w = cs.state.waiting
                parts.append(f"{cs.name} waiting: {w.reason}" + (f": {w.message}" if w.message else ""))
            elif cs.state and cs.state.terminated:
                t = cs.state.terminated
                parts.append(f"{cs.name} terminated: exit {t.exit_code} ({t.reason})")
            if cs.restart_count:
                last = cs.last_state.terminated if cs.last_state else None
                tail = f", last exit {last.exit_code} ({last.reason})" if last else ""
                parts.append(f"{cs.name} restarted {cs.restart_count}x{tail}")
        if not pod.status.container_statuses:
            for condition in pod.status.conditions or []:
                if condition.status != "True" and condition.message:
                    parts.append(f"{condition.type}: {condition.message}")
        lines.append("; ".join(parts))
    if not pods:
        lines.append("no pods exist for this Deployment")

    seen = set()
    warnings = []
    for ev in sorted(events, key=_event_time, reverse=True):
        obj = ev.involved_object
        if ev.type != "Warning" or not (obj.name in names or obj.name in revisions):
            continue
        key = (obj.name, ev.reason, ev.message)
        if key in seen:
            continue
        seen.add(key)
        count = f" x{ev.count}" if ev.count and ev.count > 1 else ""
        warnings.append(f"  {obj.kind.lower()} {obj.name}: {ev.reason}{count}: {(ev.message or '').strip()}")
    if warnings:
        lines.append("warning events (newest first):")
        lines.extend(warnings[:12])
    return "\n".join(lines)


def _event_time(ev: Any) -> datetime:
    stamp = ev.last_timestamp or ev.event_time or ev.first_timestamp or ev.metadata.creation_timestamp
    return stamp or datetime.min.replace(tzinfo=UTC)


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
