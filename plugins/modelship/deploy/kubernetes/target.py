"""The kubernetes target: AKS, or any cluster a kubeconfig in an Airflow connection reaches.

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

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelship.deploy import DeploymentFailed
from modelship.deploy.kubernetes.cluster import ClusterUnavailable, KubernetesCluster
from modelship.deploy.kubernetes.manifests import FIELD_MANAGER, JSON_PATCH, app_image, app_port, template_annotations
from modelship.deploy.kubernetes.rollout import (
    RollbackFailed,
    RolloutFailed,
    now,
    previous_replica_set,
    revision_of,
    undo_patch,
)
from modelship.deploy.verify import VerificationFailed, expected_lineage, verify_version
from modelship.lineage import (
    ANN_COMMIT,
    ANN_DEPLOYED_AT,
    ANN_IMAGE_DIGEST,
    ANN_MODEL_SHA256,
    ANN_MODEL_VERSION,
    DeploymentEvent,
)

if TYPE_CHECKING:
    from kubernetes.client import V1Deployment

log = logging.getLogger("modelship.deploy.kubernetes")


class KubernetesTarget(KubernetesCluster):
    name = "kubernetes"

    def verify(
        self, name: str, namespace: str, expected_commit: str, expected_model_version: str
    ) -> list[dict[str, Any]]:
        """GET /version of every ready pod of the current revision through the API server's pod proxy.

        A wrong or missing answer from a pod is VerificationFailed (a verdict); the API server itself not
        answering is ClusterUnavailable (an outage: nothing was learned about the pods).

        Pods on the host network (the local overlay) share one port: a request to a pod's address may reach any
        pod on the node. So there, pods of earlier revisions must be gone first; then every answer is the
        current revision's.
        """
        deployment = self._read(name, namespace)
        if deployment.spec.template.spec.host_network:
            self.wait_for_terminations(deployment)
        replica_set, pods = self.revision_pods(deployment)
        if replica_set is None:
            revision = revision_of(deployment)
            raise VerificationFailed(f"no ReplicaSet for revision {revision} of {namespace}/{name}")
        if not pods:
            raise VerificationFailed(f"no pods of revision {revision_of(deployment)} of {namespace}/{name}")
        port = app_port(deployment)
        answers = []
        for pod in pods:
            pod_name = pod.metadata.name

            def fetch(timeout: float, pod_name: str = pod_name) -> bytes:
                return self._api(
                    f"GET /version of pod {namespace}/{pod_name} (through its proxy)",
                    lambda: self.core.connect_get_namespaced_pod_proxy_with_path(
                        f"{pod_name}:{port}", namespace, "version", _preload_content=False, _request_timeout=timeout
                    ).data,
                    proxied=True,
                )

            what = f"pod {namespace}/{pod_name}"
            answers.append(
                verify_version(fetch, expected_commit, expected_model_version, what=what, outage=ClusterUnavailable)
            )
        log.info(
            "verified %d pod(s) of %s/%s: commit %s, model %s",
            len(answers),
            namespace,
            name,
            expected_commit,
            expected_model_version,
        )
        return answers

    def _read(self, name: str, namespace: str) -> V1Deployment:
        return self._api(f"reading Deployment {namespace}/{name}",
                         lambda: self.apps.read_namespaced_deployment(name, namespace))  # fmt: skip

    # -- undo ----------------------------------------------------------------------------------------------

    def rollback(
        self, name: str, namespace: str, deadline: float | None = None, *, to_revision: int | None = None
    ) -> dict[str, Any]:
        """`kubectl rollout undo [--to-revision]`: put an earlier pod template back, then wait for it.

        Without ``to_revision``, the previous revision. Returns what now serves: revision (the one
        returned to and the new number it got), commit, model version, image.
        """
        deployment = self._read(name, namespace)
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
        patch = undo_patch(previous, self._sanitize, now())
        result = self._api(  # the same patch twice leaves the same template: safe to retry
            f"rolling {namespace}/{name} back",
            lambda: self.apps.patch_namespaced_deployment(
                name, namespace, patch, field_manager=FIELD_MANAGER, _content_type=JSON_PATCH
            ),
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
            "image": app_image(done),
        }

    # -- status --------------------------------------------------------------------------------------------

    def status(self, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """What serves, from the Deployment and its current ReplicaSet alone."""
        from kubernetes.client.exceptions import ApiException

        name = name or self.app_name
        namespace = namespace or self.namespace or "default"
        out: dict[str, Any] = {"target": self.name, "name": name, "namespace": namespace}
        try:
            deployment = self._read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {**out, "serving": False}
            raise
        template = template_annotations(deployment)
        meta = deployment.metadata.annotations or {}
        image = app_image(deployment)
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
            "port": app_port(deployment) if deployment.spec.template.spec.host_network else None,
        }

    def revisions(self, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        """The build of every ReplicaSet the Deployment keeps (revisionHistoryLimit): what `rollout undo` can
        return to, the current revision included."""
        from kubernetes.client.exceptions import ApiException

        name = name or self.app_name
        namespace = namespace or self.namespace or "default"
        try:
            deployment = self._read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        found = []
        for replica_set in self._replica_sets(deployment):
            annotations = template_annotations(replica_set)  # a ReplicaSet has the Deployment's template shape
            image = app_image(replica_set)
            found.append({
                "image_digest": annotations.get(ANN_IMAGE_DIGEST) or (image.partition("@")[2] or None),
                "commit": annotations.get(ANN_COMMIT),
                "model_version": annotations.get(ANN_MODEL_VERSION),
                "model_sha256": annotations.get(ANN_MODEL_SHA256),
                "where": f"ReplicaSet {namespace}/{replica_set.metadata.name} (revision {revision_of(replica_set)})",
            })  # fmt: skip
        return found

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
        unchanged = live is not None and _same_build(live, deployment) and bool(live.status.ready_replicas)
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
        return DeploymentEvent(
            target=self.name,
            image_digest=image.split("@", 1)[1],
            image=image,
            commit=commit,
            model_version=model_version,
            revision=str(revision),
            model_sha256=str(lineage.get("model_sha256") or ""),
            changed=not (unchanged and revision == revision_of(live)),
        )

    def _stamp_deployed_at(self, deployment: dict, namespace: str) -> V1Deployment | None:
        """Set deployed-at, keeping the live one when the same build is re-applied (a re-run is a no-op).

        Returns the live Deployment (None before the first deploy).
        """
        from kubernetes.client.exceptions import ApiException

        stamp = now()
        live = None
        try:
            live = self._read(deployment["metadata"]["name"], namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            if _same_build(live, deployment):
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


def _same_build(live: V1Deployment, wanted: dict) -> bool:
    """Whether the live Deployment's pod template carries the build the rendered one does."""
    live_build = template_annotations(live)
    annotations = wanted["spec"]["template"]["metadata"]["annotations"]
    return all(live_build.get(k) == annotations.get(k) for k in (ANN_IMAGE_DIGEST, ANN_COMMIT, ANN_MODEL_VERSION))
