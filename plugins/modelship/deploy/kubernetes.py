"""Kubernetes target: AKS, or any cluster a kubeconfig in an Airflow connection reaches.

render (``kubectl kustomize`` of an overlay, image pinned by digest, lineage annotations) → apply
(server-side apply through the API, idempotent) → wait for the rollout → verify ``GET /version`` of every
new pod through the API server's pod proxy (works on AKS without exposing pods) → on failure roll back
the way ``kubectl rollout undo`` does and raise DeploymentFailed.

The cluster credential is the ``kubernetes`` connection (extra ``kube_config`` or ``kube_config_path``),
read by the provider's KubernetesHook; the registry credential for the imagePullSecret is the registry
connection. Neither is ever logged or written into a manifest. Rendering needs a kubectl with kustomize
v4+ (kubectl ≥ 1.21) on the worker; nothing else shells out.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelship.deploy import DeploymentFailed, VerificationFailed, expected_lineage, verify_version

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api, CoreV1Api, V1Deployment, V1Pod, V1ReplicaSet

    from modelship.lineage import DeploymentEvent

log = logging.getLogger(__name__)

# Lineage on the Deployment and its pod template: the Deployment controller copies the Deployment's
# annotations to each ReplicaSet, and the template's to each pod, so every revision carries its own.
ANN_COMMIT = "modelship.io/commit"
ANN_MODEL_VERSION = "modelship.io/model-version"
ANN_MODEL_SHA256 = "modelship.io/model-sha256"
ANN_IMAGE_DIGEST = "modelship.io/image-digest"
# Deployment metadata only (not the template: a timestamp there would make every re-run a new revision).
ANN_DEPLOYED_AT = "modelship.io/deployed-at"
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

DEFAULT_APP_NAME = "modelship-app"
APP_CONTAINER = "app"
PULL_SECRET = "modelship-registry"
FIELD_MANAGER = "modelship"
APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
# Only these may come out of an overlay; Secrets never do (they come from connections).
SUPPORTED_KINDS = frozenset({
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
})  # fmt: skip
_DIGEST_REF = re.compile(r"(?P<repository>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})")


class RenderFailed(Exception):
    """The overlay could not be rendered into the objects the target expects."""


class RolloutFailed(Exception):
    """A rollout did not complete; the message carries the pods' states and warning events."""


class RollbackFailed(Exception):
    """There is no earlier revision to return to, or returning to it did not complete."""


# --- pure logic: no cluster needed, tested directly ---------------------------------------------------


def pin_and_annotate(objects: Sequence[dict], image: str, lineage: Mapping[str, Any]) -> list[dict]:
    """Copies of ``objects`` with the app container pinned to ``image`` and lineage annotations added."""
    match = _DIGEST_REF.fullmatch(image)
    if not match:
        raise ValueError(f"deploy images by digest (repository@sha256:<64 hex>), got {image!r}")
    digest = match["digest"]
    if lineage.get("digest") and lineage["digest"] != digest:
        raise ValueError(f"image {image} does not match the lineage's digest {lineage['digest']}")
    commit, model_version = expected_lineage(lineage)
    annotations = {ANN_COMMIT: commit, ANN_MODEL_VERSION: model_version, ANN_IMAGE_DIGEST: digest}
    if lineage.get("model_sha256"):
        annotations[ANN_MODEL_SHA256] = str(lineage["model_sha256"])

    out = copy.deepcopy(list(objects))
    deployments = 0
    for obj in out:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key[1] == "Secret":
            raise RenderFailed("an overlay rendered a Secret: credentials come from Airflow connections only")
        if key not in SUPPORTED_KINDS:
            raise RenderFailed(f"unsupported object {key[0]}/{key[1]}: only {sorted(SUPPORTED_KINDS)}")
        if key[1] != "Deployment":
            continue
        deployments += 1
        template = obj["spec"]["template"]
        containers = [c for c in template["spec"]["containers"] if c["name"] == APP_CONTAINER]
        if not containers:
            name = obj["metadata"]["name"]
            raise RenderFailed(f"Deployment {name} has no container named {APP_CONTAINER!r}")
        containers[0]["image"] = image
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        template.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    if deployments != 1:
        raise RenderFailed(f"expected exactly one Deployment in the overlay, found {deployments}")
    return out


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


def _transient(exc: Exception) -> bool:
    """Worth retrying: no HTTP answer at all, throttling, or a server-side error."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (exc.status or 0) >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _dockerconfigjson(host: str, port: int | None, login: str, password: str) -> tuple[str, bytes]:
    """(registry, .dockerconfigjson bytes) for a docker-type connection: host[:port], no scheme."""
    server = re.sub(r"^[a-z]+://", "", host).rstrip("/")
    if port:
        server = f"{server}:{port}"
    auth = base64.b64encode(f"{login}:{password}".encode()).decode()
    config = {"auths": {server: {"username": login, "password": password, "auth": auth}}}
    return server, json.dumps(config).encode()


# --- the target -----------------------------------------------------------------------------------------


class KubernetesTarget:
    name = "kubernetes"

    def __init__(
        self,
        conn_id: str,
        *,
        namespace: str | None = None,
        overlay_dir: str | os.PathLike[str] | None = None,
        registry_conn_id: str | None = None,
        app_name: str = DEFAULT_APP_NAME,
        rollout_timeout: float = 600.0,
        poll_interval: float = 2.0,
        kubectl: str | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.namespace = namespace  # overrides the overlay's namespace when set
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.registry_conn_id = registry_conn_id
        self.app_name = app_name
        self.rollout_timeout = rollout_timeout
        self.poll_interval = poll_interval
        self.kubectl = kubectl or os.environ.get("MODELSHIP_KUBECTL") or shutil.which("kubectl") or "kubectl"

    # The hook and its clients are built on first use, never at construction (DAG parse time).
    @cached_property
    def hook(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.conn_id)

    @property
    def apps(self) -> AppsV1Api:
        return self.hook.apps_v1_client

    @property
    def core(self) -> CoreV1Api:
        return self.hook.core_v1_client

    def _sanitize(self, obj: Any) -> Any:
        return self.hook.api_client.sanitize_for_serialization(obj)

    # -- render / apply ----------------------------------------------------------------------------------

    def render(
        self, overlay_dir: str | os.PathLike[str], image_ref_by_digest: str, lineage: Mapping[str, Any]
    ) -> list[dict]:
        """Render an overlay with `kubectl kustomize`, pin the app image by digest, annotate lineage."""
        try:
            result = subprocess.run(
                [self.kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=120
            )
        except FileNotFoundError as exc:
            raise RenderFailed(f"kubectl not found ({self.kubectl}): it renders the overlays") from exc
        if result.returncode != 0:
            raise RenderFailed(f"kubectl kustomize {overlay_dir} failed: {result.stderr.strip()}")
        objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
        return pin_and_annotate(objects, image_ref_by_digest, lineage)

    def _patch_call(self, api_version: str, kind: str) -> Callable[..., Any]:
        calls = {
            ("apps/v1", "Deployment"): self.apps.patch_namespaced_deployment,
            ("v1", "Service"): self.core.patch_namespaced_service,
            ("v1", "ConfigMap"): self.core.patch_namespaced_config_map,
            ("v1", "ServiceAccount"): self.core.patch_namespaced_service_account,
            ("v1", "Secret"): self.core.patch_namespaced_secret,
        }
        try:
            return calls[(api_version, kind)]
        except KeyError:
            raise ValueError(f"cannot apply {api_version}/{kind}") from None

    def apply(self, objects: Sequence[dict]) -> list[Any]:
        """Server-side apply each object (creates or updates; re-applying the same objects changes nothing).

        Server-side apply rather than read-modify-replace: the API server merges our fields with those
        others own (clusterIP, the controller's annotations), and an unchanged object keeps its generation.
        """
        applied = []
        for obj in objects:
            meta = obj["metadata"]
            namespace = meta.get("namespace") or self.namespace or "default"
            patch = self._patch_call(obj["apiVersion"], obj["kind"])
            result = patch(
                meta["name"],
                namespace,
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )
            log.info("applied %s %s/%s", obj["kind"], namespace, meta["name"])
            applied.append(result)
        return applied

    def ensure_namespace(self, namespace: str) -> None:
        from kubernetes.client import V1Namespace, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespace(namespace)
            return
        except ApiException as exc:
            if exc.status == 403:  # namespace-scoped credentials (usual on shared AKS): assume it exists
                return
            if exc.status != 404:
                raise
        try:
            self.core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=namespace)))
            log.info("created namespace %s", namespace)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def ensure_pull_secret(self, namespace: str, registry_conn_id: str) -> None:
        """Create or update the imagePullSecret from the registry connection (host, login, password).

        The credential exists only in this API call: never in rendered files, never in logs or errors.
        """
        from airflow.sdk import BaseHook
        from kubernetes.client.exceptions import ApiException

        conn = BaseHook.get_connection(registry_conn_id)
        if not conn.host or not conn.login:
            raise ValueError(f"connection {registry_conn_id!r} needs host and login for the imagePullSecret")
        server, config = _dockerconfigjson(conn.host, conn.port, conn.login, conn.password or "")
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": PULL_SECRET,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "modelship"},
            },
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config).decode()},
        }
        try:
            self.core.patch_namespaced_secret(
                PULL_SECRET, namespace, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH
            )
        except ApiException as exc:
            # Not chained and no body: an API error could echo what we sent.
            raise DeploymentFailed(
                f"could not write imagePullSecret {namespace}/{PULL_SECRET}: HTTP {exc.status} {exc.reason}"
            ) from None
        log.info("imagePullSecret %s/%s is set for registry %s", namespace, PULL_SECRET, server)

    # -- observe -----------------------------------------------------------------------------------------

    def _replica_sets(self, deployment: V1Deployment) -> list[V1ReplicaSet]:
        selector = _selector(deployment)
        items = self.apps.list_namespaced_replica_set(deployment.metadata.namespace, label_selector=selector).items
        return [rs for rs in items if owned_by(rs, deployment.metadata.uid)]

    def _current_replica_set(self, deployment: V1Deployment) -> V1ReplicaSet | None:
        revision = revision_of(deployment)
        return next((rs for rs in self._replica_sets(deployment) if revision_of(rs) == revision), None)

    def describe_pods(self, deployment: V1Deployment) -> str:
        """The pods' states and warning events, for failure messages."""
        namespace = deployment.metadata.namespace
        selector = _selector(deployment)
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
            revisions = {rs.metadata.name: revision_of(rs) for rs in self._replica_sets(deployment)}
            events = self.core.list_namespaced_event(namespace).items
        except Exception as exc:  # a failure message must not be lost to a second failure
            return f"(could not list pods/events: {exc})"
        return summarize_pods(pods, revisions, events)

    def wait_for_terminations(self, deployment: V1Deployment) -> None:
        """Wait for pods of earlier rollouts that are still shutting down, before a new rollout starts.

        A terminating pod still holds what it held: a hostPort or the host network's port (the local
        overlay), a GPU, a volume. A rollout started then would spend its deadline Pending on "didn't have
        free ports" and be rolled back for a reason that has nothing to do with the new image. Bounded by the
        pods' grace period plus a margin; past it the deploy goes ahead and its own deadline decides.
        """
        namespace = deployment.metadata.namespace
        selector = _selector(deployment)
        grace = deployment.spec.template.spec.termination_grace_period_seconds or 30
        until = time.monotonic() + grace + 30
        while True:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
            leaving = sorted(pod.metadata.name for pod in pods if pod.metadata.deletion_timestamp is not None)
            if not leaving:
                return
            if time.monotonic() >= until:
                log.warning("pods %s are still terminating after %ds; deploying anyway", ", ".join(leaving), grace + 30)
                return
            log.info("waiting for terminating pods of an earlier rollout: %s", ", ".join(leaving))
            time.sleep(self.poll_interval)

    def wait_for_rollout(self, name: str, namespace: str, generation: int, deadline: float) -> V1Deployment:
        """Wait until the rollout of ``generation`` is complete; ``deadline`` is a time.monotonic() value.

        Raises RolloutFailed at the deadline (or when the controller reports its progress deadline
        exceeded) with the pods' states and warning events: ImagePullBackOff, CrashLoopBackOff, probes.
        """
        failures = 0
        while True:
            try:
                deployment = self.apps.read_namespaced_deployment(name, namespace)
            except Exception as exc:
                # An API server blip must not abandon a rollout half-way (no rollback would follow):
                # keep polling, with backoff, until the deadline.
                if not _transient(exc) or time.monotonic() >= deadline:
                    raise
                failures += 1
                log.warning("reading %s/%s failed (%s), retrying", namespace, name, exc)
                time.sleep(min(self.poll_interval * 2**failures, 30.0, max(0.0, deadline - time.monotonic())))
                continue
            failures = 0
            state = rollout_state(deployment, generation)
            if state.done:
                log.info("rollout of %s/%s complete: %s", namespace, name, state.reason)
                return deployment
            if state.failed or time.monotonic() >= deadline:
                why = state.reason if state.failed else f"not complete by the deadline: {state.reason}"
                raise RolloutFailed(
                    f"rollout of {namespace}/{name} (revision {revision_of(deployment)}) failed: {why}\n"
                    + self.describe_pods(deployment)
                )
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def verify(
        self, name: str, namespace: str, expected_commit: str, expected_model_version: str
    ) -> list[dict[str, Any]]:
        """GET /version of every ready pod of the current revision through the API server's pod proxy."""
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        replica_set = self._current_replica_set(deployment)
        if replica_set is None:
            revision = revision_of(deployment)
            raise VerificationFailed(f"no ReplicaSet for revision {revision} of {namespace}/{name}")
        pod_hash = replica_set.metadata.labels["pod-template-hash"]
        listed = self.core.list_namespaced_pod(namespace, label_selector=f"pod-template-hash={pod_hash}").items
        pods = [
            pod for pod in listed if owned_by(pod, replica_set.metadata.uid) and pod.metadata.deletion_timestamp is None
        ]
        if not pods:
            raise VerificationFailed(f"no pods of revision {revision_of(deployment)} of {namespace}/{name}")
        port = _app_port(deployment)
        answers = []
        for pod in pods:
            pod_name = pod.metadata.name

            def fetch(timeout: float, pod_name: str = pod_name) -> bytes:
                response = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod_name}:{port}", namespace, "version", _preload_content=False, _request_timeout=timeout
                )
                return response.data

            what = f"pod {namespace}/{pod_name}"
            answers.append(verify_version(fetch, expected_commit, expected_model_version, what=what))
        log.info(
            "verified %d pod(s) of %s/%s: commit %s, model %s",
            len(answers),
            namespace,
            name,
            expected_commit,
            expected_model_version,
        )
        return answers

    # -- undo ----------------------------------------------------------------------------------------------

    def rollback(
        self, name: str, namespace: str, deadline: float | None = None, *, to_revision: int | None = None
    ) -> dict[str, Any]:
        """`kubectl rollout undo [--to-revision]`: put an earlier pod template back, then wait for it.

        Without ``to_revision``, the previous revision. Returns what now serves: revision (the one
        returned to and the new number it got), commit, model version, image.
        """
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        current = revision_of(deployment)
        replica_sets = self._replica_sets(deployment)
        if to_revision is not None and to_revision != current:
            previous = next((rs for rs in replica_sets if revision_of(rs) == to_revision), None)
            if previous is None:
                raise RollbackFailed(f"revision {to_revision} of {namespace}/{name} no longer exists")
        else:
            previous = previous_replica_set(replica_sets, current)
        if previous is None:
            raise RollbackFailed(f"{namespace}/{name} has no revision before {current} to roll back to")
        patch = undo_patch(previous, self._sanitize, _now())
        result = self.apps.patch_namespaced_deployment(
            name, namespace, patch, field_manager=FIELD_MANAGER, _content_type=JSON_PATCH
        )
        log.warning(
            "rolling %s/%s back from revision %s to revision %s", namespace, name, current, revision_of(previous)
        )
        deadline = deadline if deadline is not None else time.monotonic() + self.rollout_timeout
        try:
            done = self.wait_for_rollout(name, namespace, result.metadata.generation, deadline)
        except RolloutFailed as exc:
            raise RollbackFailed(f"rollback to revision {revision_of(previous)} did not finish: {exc}") from exc
        annotations = previous.metadata.annotations or {}
        return {
            "revision": revision_of(previous),
            "new_revision": revision_of(done),
            "commit": annotations.get(ANN_COMMIT),
            "model_version": annotations.get(ANN_MODEL_VERSION),
            "image": _app_image(done),
        }

    # -- status --------------------------------------------------------------------------------------------

    def status(self, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """What serves, from the Deployment and its current ReplicaSet alone."""
        from kubernetes.client.exceptions import ApiException

        name = name or self.app_name
        namespace = namespace or self.namespace or "default"
        out: dict[str, Any] = {"target": self.name, "name": name, "namespace": namespace}
        try:
            deployment = self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {**out, "serving": False}
            raise
        template = _template_annotations(deployment)
        meta = deployment.metadata.annotations or {}
        image = _app_image(deployment)
        replica_set = self._current_replica_set(deployment)
        ready = deployment.status.ready_replicas or 0
        created = replica_set.metadata.creation_timestamp if replica_set else None
        return {
            **out,
            "serving": ready > 0,
            "replicas": f"{ready}/{deployment.spec.replicas}",
            "revision": revision_of(deployment),
            "image": image,
            "image_digest": template.get(ANN_IMAGE_DIGEST) or (image.partition("@")[2] or None),
            "commit": template.get(ANN_COMMIT),
            "model_version": template.get(ANN_MODEL_VERSION),
            "model_sha256": template.get(ANN_MODEL_SHA256),
            "since": meta.get(ANN_DEPLOYED_AT) or (created.isoformat() if created else None),
            "revision_created": created.isoformat() if created else None,
            # On the host network (the local overlay) the app answers on the node's loopback at its port.
            "port": _app_port(deployment) if deployment.spec.template.spec.host_network else None,
        }

    # -- the whole release step ------------------------------------------------------------------------

    def deploy(
        self,
        image: str,
        lineage: Mapping[str, Any],
        *,
        overlay_dir: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> DeploymentEvent:
        """render → apply → wait → verify; on failure roll back and raise DeploymentFailed."""
        overlay = overlay_dir or self.overlay_dir
        if overlay is None:
            raise ValueError("no overlay: pass overlay_dir or construct the target with one")
        commit, model_version = expected_lineage(lineage)
        objects = self.render(overlay, image, lineage)
        if self.namespace:
            for obj in objects:
                obj["metadata"]["namespace"] = self.namespace
        deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
        name = deployment["metadata"]["name"]
        namespace = deployment["metadata"].get("namespace") or "default"

        self.ensure_namespace(namespace)
        if self.registry_conn_id:
            self.ensure_pull_secret(namespace, self.registry_conn_id)
        live = self._stamp_deployed_at(deployment, namespace)
        # On failure, return to the revision that served before this deploy, named explicitly (it is
        # kubectl's "previous" when the apply made a new revision; if it did not, rollback() falls back to it).
        serving_before = revision_of(live) if live is not None else None

        if live is not None:
            self.wait_for_terminations(live)
        deadline = time.monotonic() + (timeout if timeout is not None else self.rollout_timeout)
        applied = self.apply(objects)
        generation = next(obj for obj in applied if obj.kind == "Deployment").metadata.generation
        try:
            done = self.wait_for_rollout(name, namespace, generation, deadline)
            self.verify(name, namespace, commit, model_version)
        except (RolloutFailed, VerificationFailed) as exc:
            raise DeploymentFailed(self._roll_back_after(name, namespace, image, exc, serving_before)) from exc
        revision = revision_of(done)
        log.info(
            "deployed %s to %s/%s: revision %s, commit %s, model %s",
            image,
            namespace,
            name,
            revision,
            commit,
            model_version,
        )
        return {
            "target": self.name,
            "image_digest": image.split("@", 1)[1],
            "image": image,
            "commit": commit,
            "model_version": model_version,
            "revision": str(revision),
        }

    def _stamp_deployed_at(self, deployment: dict, namespace: str) -> V1Deployment | None:
        """Set deployed-at, keeping the live one when the same build is re-applied (a re-run is a no-op).

        Returns the live Deployment (None before the first deploy).
        """
        from kubernetes.client.exceptions import ApiException

        stamp = _now()
        live = None
        try:
            live = self.apps.read_namespaced_deployment(deployment["metadata"]["name"], namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            live_build = _template_annotations(live)
            wanted = deployment["spec"]["template"]["metadata"]["annotations"]
            if all(live_build.get(k) == wanted.get(k) for k in (ANN_IMAGE_DIGEST, ANN_COMMIT, ANN_MODEL_VERSION)):
                stamp = (live.metadata.annotations or {}).get(ANN_DEPLOYED_AT) or stamp
        deployment["metadata"]["annotations"][ANN_DEPLOYED_AT] = stamp
        return live

    def _roll_back_after(
        self, name: str, namespace: str, image: str, failure: Exception, to_revision: int | None
    ) -> str:
        """Roll back after a failed rollout or verification; the DeploymentFailed message."""
        what = f"deploying {image} to {namespace}/{name} failed: {failure}"
        if to_revision is None:
            return f"{what}\nNOT rolled back: nothing served before this deploy"
        try:
            back = self.rollback(name, namespace, to_revision=to_revision)
        except RollbackFailed as exc:
            return f"{what}\nNOT rolled back: {exc}"
        to = f"rolled back to revision {back['revision']} (now revision {back['new_revision']})"
        if not back["commit"] or not back["model_version"]:
            return f"{what}\n{to}, which carries no modelship lineage annotations to verify"
        serving = f"commit {back['commit']} / model {back['model_version']}"
        try:
            self.verify(name, namespace, back["commit"], back["model_version"])
        except VerificationFailed as exc:
            return f"{what}\n{to}: {serving}, but its /version check failed: {exc}"
        return f"{what}\n{to}, serving {serving}"


def _selector(deployment: V1Deployment) -> str:
    """The Deployment's matchLabels as a label selector: its ReplicaSets and pods, every revision."""
    return ",".join(f"{k}={v}" for k, v in (deployment.spec.selector.match_labels or {}).items())


def _template_annotations(deployment: V1Deployment) -> dict[str, str]:
    meta = deployment.spec.template.metadata
    return dict(meta.annotations or {}) if meta else {}


def _app_container(deployment: V1Deployment):
    containers = deployment.spec.template.spec.containers
    return next((c for c in containers if c.name == APP_CONTAINER), containers[0])


def _app_image(deployment: V1Deployment) -> str:
    return _app_container(deployment).image


def _app_port(deployment: V1Deployment) -> int:
    ports = _app_container(deployment).ports or []
    port = next((p for p in ports if p.name == "http"), ports[0] if ports else None)
    if port is None:
        raise VerificationFailed(f"container {APP_CONTAINER!r} declares no port to verify through")
    return port.container_port
