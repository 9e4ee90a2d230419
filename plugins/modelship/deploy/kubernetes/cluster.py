"""The Kubernetes API calls a release makes, through the provider's KubernetesHook on the `kubernetes`
connection: render, apply (server-side), ensure the namespace and the imagePullSecret, observe pods and
ReplicaSets, wait for a rollout. The release logic on top of them is target.py.

Every call is retried (`_api`, modelship.retry) while the API server does not answer or answers 5xx/429: it
restarts, it is upgraded, its etcd blips. Every call here is safe to send twice (reads, server-side apply, the
rollback's JSON patch). Still failing after the policy's budget, a call raises ClusterUnavailable: an outage,
left to the task's retries, never a verdict on the release. A refusal (403, 422, …) is raised at once."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from modelship import retry
from modelship.deploy import DeploymentFailed
from modelship.deploy.kubernetes.manifests import (
    APPLY_PATCH,
    DEFAULT_APP_NAME,
    FIELD_MANAGER,
    PULL_SECRET,
    RenderFailed,
    dockerconfigjson,
    pin_and_annotate,
    selector,
)
from modelship.deploy.kubernetes.rollout import (
    RolloutFailed,
    hopeless,
    owned_by,
    revision_of,
    rollout_state,
    startup_budget,
    summarize_pods,
)

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api, CoreV1Api, V1Deployment, V1Pod, V1ReplicaSet

log = logging.getLogger("modelship.deploy.kubernetes")
T = TypeVar("T")

# 1, 2, 4, 8, 8 s between six tries: an API server restarting (≈ 10 s here, a managed control plane's upgrade
# blip) is ridden out; longer, the task's own retries take over.
API_POLICY = retry.Policy(attempts=6, base=1.0, max_delay=8.0)


class ClusterUnavailable(retry.Transient, RuntimeError):
    """The Kubernetes API server did not answer (or answered 5xx/429) even after the retries: an outage, not a
    verdict on the release. The message names the call and the server, never a request or response body."""


def said(exc: BaseException) -> str:
    """What a failed API call says, without its body: an API error can echo the object that was sent."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return retry.first_line(exc)


class KubernetesCluster:
    """The API calls a release makes, on the cluster of one `kubernetes` connection: apply, observe, wait."""

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
        api_policy: retry.Policy = API_POLICY,
    ) -> None:
        self.conn_id = conn_id
        self.namespace = namespace  # overrides the overlay's namespace when set
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.registry_conn_id = registry_conn_id
        self.app_name = app_name
        self.rollout_timeout = rollout_timeout
        self.poll_interval = poll_interval
        self.kubectl = kubectl or os.environ.get("MODELSHIP_KUBECTL") or shutil.which("kubectl") or "kubectl"
        self.api_policy = api_policy

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

    @property
    def server(self) -> str:
        """The API server's address, from the connection's kubeconfig (for messages)."""
        return str(getattr(self.hook.api_client.configuration, "host", "") or "?")

    def _api(self, what: str, call: Callable[[], T], *, proxied: bool = False) -> T:
        """call() under API_POLICY; ClusterUnavailable once the API server stayed away for the whole budget.

        proxied: the call reaches a pod through the API server's proxy, so an HTTP error is the pod's answer,
        raised at once for the caller to judge; only no answer at all is the API server's outage.
        """
        from kubernetes.client.exceptions import ApiException

        def transient(exc: BaseException) -> bool:
            answered = isinstance(exc, ApiException) and exc.status != 0
            return retry.is_transient(exc) and not (proxied and answered)

        try:
            return retry.call(call, f"Kubernetes API {what}", policy=self.api_policy, transient=transient, logger=log)
        except Exception as exc:
            if not transient(exc):
                raise
            raise ClusterUnavailable(
                f"the Kubernetes API server {self.server} did not answer {what} after {self.api_policy.attempts} "
                f"attempts: {said(exc)}"
            ) from (None if isinstance(exc, ApiException) else exc)

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
            result = self._api(
                f"applying {obj['kind']} {namespace}/{meta['name']}",
                lambda patch=patch, meta=meta, namespace=namespace, obj=obj: patch(
                    meta["name"], namespace, obj, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH
                ),
            )
            log.info("applied %s %s/%s", obj["kind"], namespace, meta["name"])
            applied.append(result)
        return applied

    def ensure_namespace(self, namespace: str) -> None:
        from kubernetes.client import V1Namespace, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        try:
            self._api(f"reading namespace {namespace}", lambda: self.core.read_namespace(namespace))
            return
        except ApiException as exc:
            if exc.status == 403:  # namespace-scoped credentials (usual on shared AKS): assume it exists
                return
            if exc.status != 404:
                raise
        try:
            body = V1Namespace(metadata=V1ObjectMeta(name=namespace))
            self._api(f"creating namespace {namespace}", lambda: self.core.create_namespace(body))
            log.info("created namespace %s", namespace)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def ensure_pull_secret(self, namespace: str, registry_conn_id: str) -> None:
        """Create or update the imagePullSecret from the registry connection (host, login, password).

        The credential exists only in this API call: never in rendered files, never in logs or errors. The
        API server not answering is retried (ClusterUnavailable after the budget); a refusal is DeploymentFailed.
        """
        from airflow.sdk import BaseHook
        from kubernetes.client.exceptions import ApiException

        conn = BaseHook.get_connection(registry_conn_id)
        if not conn.host or not conn.login:
            raise ValueError(f"connection {registry_conn_id!r} needs host and login for the imagePullSecret")
        server, config = dockerconfigjson(conn.host, conn.port, conn.login, conn.password or "")
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
            self._api(
                f"writing imagePullSecret {namespace}/{PULL_SECRET}",
                lambda: self.core.patch_namespaced_secret(
                    PULL_SECRET, namespace, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH
                ),
            )
        except ApiException as exc:
            # Not chained and no body: an API error could echo what we sent.
            raise DeploymentFailed(
                f"could not write imagePullSecret {namespace}/{PULL_SECRET}: HTTP {exc.status} {exc.reason}"
            ) from None
        log.info("imagePullSecret %s/%s is set for registry %s", namespace, PULL_SECRET, server)

    # -- observe -----------------------------------------------------------------------------------------

    def _replica_sets(self, deployment: V1Deployment) -> list[V1ReplicaSet]:
        labels, namespace = selector(deployment), deployment.metadata.namespace
        items = self._api(
            f"listing ReplicaSets in {namespace}",
            lambda: self.apps.list_namespaced_replica_set(namespace, label_selector=labels).items,
        )
        return [rs for rs in items if owned_by(rs, deployment.metadata.uid)]

    def _current_replica_set(self, deployment: V1Deployment) -> V1ReplicaSet | None:
        revision = revision_of(deployment)
        return next((rs for rs in self._replica_sets(deployment) if revision_of(rs) == revision), None)

    def revision_pods(self, deployment: V1Deployment) -> tuple[V1ReplicaSet | None, list[V1Pod]]:
        """The ReplicaSet of the Deployment's current revision and its live pods (not terminating)."""
        replica_set = self._current_replica_set(deployment)
        if replica_set is None:
            return None, []
        pod_hash = replica_set.metadata.labels["pod-template-hash"]
        namespace = deployment.metadata.namespace
        listed = self._api(
            f"listing pods in {namespace}",
            lambda: self.core.list_namespaced_pod(namespace, label_selector=f"pod-template-hash={pod_hash}").items,
        )
        live = [p for p in listed if owned_by(p, replica_set.metadata.uid) and p.metadata.deletion_timestamp is None]
        return replica_set, live

    def describe_pods(self, deployment: V1Deployment) -> str:
        """The pods' states and warning events, for failure messages."""
        namespace = deployment.metadata.namespace
        labels = selector(deployment)
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=labels).items
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
        labels = selector(deployment)
        grace = deployment.spec.template.spec.termination_grace_period_seconds or 30
        until = time.monotonic() + grace + 30
        while True:
            pods = self._api(
                f"listing pods in {namespace}",
                lambda: self.core.list_namespaced_pod(namespace, label_selector=labels).items,
            )
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

        Raises RolloutFailed with the pods' states and warning events as soon as the new revision cannot come
        up (crash-looping, an image that cannot be pulled, not ready past its own start-up budget: see
        rollout.hopeless), when the controller reports its progress deadline exceeded, or at ``deadline``.
        The API server going away meanwhile does not end the wait: the rollout goes on without it, so it is
        polled again, with backoff, until the deadline (then ClusterUnavailable: nothing is known, nothing rolled
        back).
        """
        failures = 0
        while True:
            try:
                deployment, state, why = self._observe_rollout(name, namespace, generation)
            except Exception as exc:
                # An API server blip must not abandon a rollout half-way (no rollback would follow).
                if not retry.is_transient(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable(
                        f"the Kubernetes API server {self.server} did not answer while the rollout of "
                        f"{namespace}/{name} (generation {generation}) went on, until its deadline: {said(exc)}"
                    ) from None
                failures += 1
                log.warning("reading the rollout of %s/%s failed (%s), retrying", namespace, name, said(exc))
                time.sleep(min(self.poll_interval * 2**failures, 30.0, max(0.0, deadline - time.monotonic())))
                continue
            failures = 0
            if state.done:
                log.info("rollout of %s/%s complete: %s", namespace, name, state.reason)
                return deployment
            if why is None and time.monotonic() >= deadline:
                why = f"not complete by the deadline: {state.reason}"
            if why is not None:
                raise RolloutFailed(
                    f"rollout of {namespace}/{name} (revision {revision_of(deployment)}) failed: {why}\n"
                    + self.describe_pods(deployment)
                )
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def _observe_rollout(self, name: str, namespace: str, generation: int) -> tuple[V1Deployment, Any, str | None]:
        """One look at a rollout: the Deployment, its RolloutState, and why it failed (None: not failed yet)."""
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        state = rollout_state(deployment, generation)
        why = state.reason if state.failed else None
        if not state.done and why is None and (deployment.status.observed_generation or 0) >= generation:
            # Only once the controller works on this generation: before that the "current" revision is the
            # old one, whose pods may carry restarts from long ago.
            _, pods = self.revision_pods(deployment)
            budget = startup_budget(deployment.spec.template.spec, deployment.spec.min_ready_seconds)
            cause = hopeless(pods, budget)
            if cause is not None:
                why = f"the new revision cannot come up: {cause}"
        return deployment, state, why
