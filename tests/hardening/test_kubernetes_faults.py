"""The Kubernetes API server failing under a release, on the real local cluster (opt-in: MODELSHIP_K8S=1).

Two ways, both real:

- a proxy (tests/faultproxy.py) terminating TLS with the API server's own certificate stands between the target
  and the API server, and answers 503 or cuts the connection exactly where it hurts: while the imagePullSecret
  is written, the manifests are applied, a pod's /version is read through the API server's proxy and a bad
  release is rolled back. Each is retried (KubernetesCluster._api) and the release ends as it should: green, or
  rolled back to what served before. A refusal (403) is a verdict at once, with one request and no retry; an
  API server that stays away past the budget is ClusterUnavailable (transient), never a verdict.
- the kube-apiserver process itself is stopped (by its pid file) right after the apply, mid-rollout, and
  started again (the kit's up.sh) once the deploy has met the outage: the deploy ends green, no manual step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import components
from devstack.cluster import LocalCluster
from devstack.process import alive
from modelship import net
from modelship.deploy import DeploymentFailed
from modelship.deploy.kubernetes import KubernetesTarget
from modelship.deploy.kubernetes.cluster import ClusterUnavailable
from modelship.retry import Policy, Transient
from modelship.verdicts import Verdict
from tests.faultproxy import FaultProxy, ResetResponse, Respond
from tests.k8s.conftest import local_overlay_on
from tests.logcapture import log_messages
from tests.plugins.deploy_fixtures import build_standin

pytest_plugins = ["tests.k8s.conftest"]

DIRECT = "modelship_test_faults_kube"  # straight to the API server
PROXIED = "modelship_test_faults_kube_proxied"  # through the fault proxy
REGISTRY_CONN = "modelship_test_faults_registry"
SECRET = r"PATCH /api/v1/namespaces/[^/]+/secrets/modelship-registry\?"
DEPLOYMENT = r"PATCH /apis/apps/v1/namespaces/[^/]+/deployments/modelship-app\?"
POD_VERSION = r"GET /api/v1/namespaces/[^/]+/pods/[^/]+/proxy/version"


@pytest.fixture(scope="module")
def api_proxy(k8s_cluster: LocalCluster) -> Iterator[FaultProxy]:
    pki = k8s_cluster.home / "pki"
    with FaultProxy(6443, tls=(str(pki / "apiserver.crt"), str(pki / "apiserver.key")), name="kube-proxy") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def kube_env(k8s_cluster: LocalCluster, api_proxy: FaultProxy, registry: components.Registry) -> Iterator[None]:
    direct = k8s_cluster.kubeconfig.read_text()
    config = yaml.safe_load(direct)
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{api_proxy.address}"
    conns = {
        DIRECT: {"conn_type": "kubernetes", "extra": {"kube_config": direct}},
        PROXIED: {"conn_type": "kubernetes", "extra": {"kube_config": yaml.safe_dump(config)}},
        REGISTRY_CONN: {"conn_type": "docker", "host": registry.address, "login": registry.username,
                        "password": registry.password},
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for conn_id, conn in conns.items():
            patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        yield


@pytest.fixture(scope="module")
def namespace(kube_env) -> Iterator[str]:
    name = f"modelship-faults-{uuid.uuid4().hex[:8]}"
    yield name
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client.exceptions import ApiException

    try:
        KubernetesHook(conn_id=DIRECT).core_v1_client.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def images(docker_client, registry: components.Registry) -> dict[str, Any]:
    """Stand-ins in the real registry: v1, v2 and a crash-looping one; key → (stand-in, repository@digest)."""
    auth = {"username": registry.username, "password": registry.password}
    repository = f"{registry.address}/modelship-faults/standin"
    pushed = {}
    for key, options in (("v1", {}), ("v2", {}), ("crashes", {"broken": "exit"})):
        image = build_standin(docker_client, f"modelship-faults/standin:{key}", f"faults-{key}", **options)
        docker_client.images.get(image.id).tag(repository, tag=key)
        digest = None
        for line in docker_client.images.push(repository, tag=key, auth_config=auth, stream=True, decode=True):
            assert "error" not in line, line
            digest = line.get("aux", {}).get("Digest", digest)
        pushed[key] = (image, f"{repository}@{digest}")
    return pushed


def target(conn_id: str, namespace: str, overlay: Path, **options: Any) -> KubernetesTarget:
    return KubernetesTarget(conn_id, namespace=namespace, overlay_dir=overlay, registry_conn_id=REGISTRY_CONN,
                            poll_interval=1.0, rollout_timeout=120, **options)  # fmt: skip


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return local_overlay_on(tmp_path_factory.mktemp("faults-overlay"), net.free_port())


@pytest.mark.k8s
def test_a_release_rides_out_503s_and_cuts_at_every_api_step_and_a_bad_one_is_still_rolled_back(
    api_proxy: FaultProxy, namespace: str, overlay: Path, images: dict[str, Any]
) -> None:
    v1, v1_ref = images["v1"]
    through_proxy = target(PROXIED, namespace, overlay)
    secret = Respond(status=503, match=SECRET, times=2)  # was DeploymentFailed at once
    apply = Respond(status=503, match=DEPLOYMENT, times=2)
    verify = ResetResponse(match=POD_VERSION, after=0, times=1)  # the pod proxy's answer cut: no answer at all
    api_proxy.arm(secret, apply, verify)
    with log_messages("modelship.deploy", logging.WARNING) as retries:
        event = through_proxy.deploy(v1_ref, v1.lineage(), timeout=180)
    assert event.commit == v1.commit and event.revision == "1"
    assert (secret.fired, apply.fired, verify.fired) == (2, 2, 1), api_proxy.requests
    # One retry for each injected 503. A pooled keep-alive connection that the proxy or the API server closed
    # meanwhile may cost one more (RemoteDisconnected, seen on a cold CI machine): retried just the same.
    injected = "failed ((503))"
    assert sum(f"writing imagePullSecret {namespace}/modelship-registry {injected}" in m for m in retries) == 2, retries
    assert sum(f"applying Deployment {namespace}/modelship-app {injected}" in m for m in retries) == 2, retries
    assert any("GET /version of pod" in m and "retry 1/5" in m for m in retries), retries

    # A crash-looping build, with the API server failing the rollback's patch twice: it is still rolled back.
    bad, bad_ref = images["crashes"]
    rollback = Respond(status=503, match=DEPLOYMENT, skip=1, times=2)  # the apply goes through, the undo does not
    api_proxy.arm(rollback)
    with pytest.raises(DeploymentFailed) as failed:
        through_proxy.deploy(bad_ref, bad.lineage(), timeout=120)
    assert rollback.fired == 2, api_proxy.requests
    message = str(failed.value)
    assert "the new revision cannot come up" in message, message
    assert f"rolled back to revision 1 (now revision 3), serving commit {v1.commit}" in message, message
    status = target(DIRECT, namespace, overlay).status()
    assert status["commit"] == v1.commit and status["image"] == v1_ref and status["serving"], status


@pytest.mark.k8s
def test_a_refused_api_call_is_a_verdict_at_once_and_an_api_server_gone_for_good_is_not(
    api_proxy: FaultProxy, namespace: str, overlay: Path, images: dict[str, Any], registry: components.Registry
) -> None:
    v1, v1_ref = images["v1"]
    forbidden = Respond(status=403, reason="Forbidden", match=SECRET, times=1)
    api_proxy.arm(forbidden)
    before = len(api_proxy.requests)
    with pytest.raises(DeploymentFailed, match=r"could not write imagePullSecret .*: HTTP 403 Forbidden"):
        target(PROXIED, namespace, overlay).deploy(v1_ref, v1.lineage(), timeout=60)
    assert forbidden.fired == 1
    assert sum(1 for line in api_proxy.requests[before:] if "/secrets/" in line) == 1  # asked once, no retry

    # Down for longer than the budget (here 3 tries): transient, so the task's retries take over; no body, no
    # secret in the message.
    down = Respond(status=503, match=SECRET, times=100)
    api_proxy.arm(down)
    quick = target(PROXIED, namespace, overlay, api_policy=Policy(attempts=3, base=0.1))
    with pytest.raises(ClusterUnavailable) as outage:
        quick.deploy(v1_ref, v1.lineage(), timeout=60)
    api_proxy.disarm()
    assert down.fired == 3
    assert isinstance(outage.value, Transient) and not isinstance(outage.value, Verdict)
    message = str(outage.value)
    said = f"did not answer writing imagePullSecret {namespace}/modelship-registry after 3 attempts: HTTP 503"
    assert said in message, message
    assert registry.password not in message and outage.value.__cause__ is None


def only_user_of(cluster: LocalCluster) -> None:
    others = [lease for lease in cluster.users() if lease != f"pid-{os.getpid()}"]
    if others:
        pytest.skip(f"NOT RUN: stopping the shared cluster's API server would break its other users ({others})")


@pytest.mark.k8s
def test_the_api_server_stopped_mid_rollout_and_restarted_the_deploy_ends_green(
    k8s_cluster: LocalCluster, namespace: str, overlay: Path, images: dict[str, Any]
) -> None:
    only_user_of(k8s_cluster)
    v1, v1_ref = images["v1"]
    v2, v2_ref = images["v2"]
    direct = target(DIRECT, namespace, overlay)
    direct.deploy(v1_ref, v1.lineage(), timeout=180)  # what serves before (a no-op when it already does)
    pid_file = k8s_cluster.home / "run" / "kube-apiserver.pid"
    happened: list[str] = []

    class Outage(logging.Handler):
        """In the deploy's own thread: right after the apply, the API server goes; once the deploy has met the
        outage, it comes back (up.sh starts only what is not running)."""

        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            try:
                if message.startswith("applied Deployment") and not happened:
                    # As the kit's down.sh stops one component: SIGTERM by its pid file, wait, forget the pid.
                    pid = int(pid_file.read_text())
                    os.kill(pid, signal.SIGTERM)
                    while alive(pid):
                        time.sleep(0.1)
                    pid_file.unlink()
                    happened.append("stopped")
                elif " failed (" in message and happened == ["stopped"]:  # a retry: the deploy met the outage
                    happened.append("met")
                    k8s_cluster._script("up", timeout=300)  # starts what is not running: the API server
                    happened.append("restarted")
            except Exception as exc:  # noqa: BLE001 (reported by the test, not lost in the deploy's thread)
                happened.append(f"{type(exc).__name__}: {exc}")

    handler = Outage()
    logger = logging.getLogger("modelship.deploy.kubernetes")
    outcome: dict[str, Any] = {}
    with log_messages("modelship.deploy.kubernetes"):  # level INFO, loggers enabled
        logger.addHandler(handler)
        try:
            worker = threading.Thread(target=lambda: outcome.update(event=direct.deploy(v2_ref, v2.lineage(),
                                                                                         timeout=300)))  # fmt: skip
            worker.start()
            worker.join(600)
        finally:
            logger.removeHandler(handler)
            if not k8s_cluster.ready():
                k8s_cluster._script("up", timeout=300)
    assert happened == ["stopped", "met", "restarted"], happened
    event = outcome.get("event")
    assert event is not None and event.commit == v2.commit and event.changed, outcome
    status = direct.status()
    assert status["serving"] and status["commit"] == v2.commit and status["image"] == v2_ref, status
