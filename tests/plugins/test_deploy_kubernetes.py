"""The kubernetes target.

First its decisions, without a cluster: which revision a rollback returns to, when a rollout counts as
done, what a failure message says, how the app image is pinned and annotated. Then the whole thing
against the real local cluster (opt-in, MODELSHIP_K8S=1; see tests/k8s/conftest.py): stand-in images
pushed to the real registry and pulled by the kubelet with the imagePullSecret the target creates,
rollouts, a readiness failure, an unpullable image, a crash loop and a wrong build, each rolled back.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s

from devstack import components
from modelship import net
from modelship.deploy import DeploymentFailed
from modelship.deploy.kubernetes import (
    REVISION,
    STARTUP_SLACK,
    KubernetesTarget,
    RenderFailed,
    RolloutFailed,
    dockerconfigjson,
    hopeless,
    pin_and_annotate,
    previous_replica_set,
    rollout_state,
    startup_budget,
    summarize_pods,
    undo_patch,
)
from modelship.lineage import (
    ANN_COMMIT,
    ANN_DEPLOYED_AT,
    ANN_IMAGE_DIGEST,
    ANN_MODEL_SHA256,
    ANN_MODEL_VERSION,
    DeploymentEvent,
)
from tests.k8s.conftest import local_overlay_on
from tests.logcapture import log_messages

pytest_plugins = ["deploy_fixtures", "tests.k8s.conftest"]

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
LINEAGE = {"commit": "c0ffee" * 6 + "abcd", "model_version": "v7", "model_sha256": "12" * 32, "digest": DIGEST}


# --- decisions, no cluster --------------------------------------------------------------------------------


def replica_set(name: str, revision: int | None, owner: str = "dep-uid", **annotations: str) -> k8s.V1ReplicaSet:
    if revision is not None:
        annotations[REVISION] = str(revision)
    return k8s.V1ReplicaSet(
        metadata=k8s.V1ObjectMeta(
            name=name,
            annotations=annotations,
            owner_references=[k8s.V1OwnerReference(api_version="apps/v1", kind="Deployment", name="d", uid=owner)],
        ),
        spec=k8s.V1ReplicaSetSpec(
            selector=k8s.V1LabelSelector(match_labels={"app": "x"}),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels={"app": "x", "pod-template-hash": "abc123"}, annotations={}),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image=f"repo@{DIGEST}")]),
            ),
        ),
    )


def test_rollback_returns_to_the_highest_revision_below_the_current_one() -> None:
    sets = [replica_set("r1", 1), replica_set("r3", 3), replica_set("r2", 2), replica_set("r4", 4)]
    assert previous_replica_set(sets, 4).metadata.name == "r3"
    # After an undo from 4 to 3, r3 carries revision 5: "previous" is now r4, as with kubectl.
    after_undo = [replica_set("r1", 1), replica_set("r2", 2), replica_set("r4", 4), replica_set("r3", 5)]
    assert previous_replica_set(after_undo, 5).metadata.name == "r4"


def test_rollback_has_nowhere_to_go_from_the_first_revision() -> None:
    assert previous_replica_set([replica_set("r1", 1), replica_set("odd", None)], 1) is None


def test_undo_patch_restores_the_template_and_lineage_but_not_the_controllers_bookkeeping() -> None:
    annotations = {
        ANN_COMMIT: "old",
        ANN_MODEL_VERSION: "v1",
        ANN_DEPLOYED_AT: "2020-01-01T00:00:00+00:00",
        "deployment.kubernetes.io/desired-replicas": "2",
    }
    old = replica_set("r2", 2, **annotations)
    patch = undo_patch(old, k8s.ApiClient().sanitize_for_serialization, "2026-11-25T00:00:00+00:00")
    ops = {op["path"]: op for op in patch}
    template = ops["/spec/template"]["value"]
    assert template["metadata"]["labels"] == {"app": "x"}  # the controller adds pod-template-hash itself
    assert template["spec"]["containers"][0]["image"] == f"repo@{DIGEST}"
    annotations = ops["/metadata/annotations"]["value"]
    assert annotations[ANN_COMMIT] == "old" and annotations[ANN_MODEL_VERSION] == "v1"
    assert annotations[ANN_DEPLOYED_AT] == "2026-11-25T00:00:00+00:00"  # serving again since now
    assert REVISION not in annotations and "deployment.kubernetes.io/desired-replicas" not in annotations


def deployment(generation: int = 2, observed: int = 2, spec_replicas: int = 2, **status: Any) -> k8s.V1Deployment:
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="d", namespace="ns", generation=generation, annotations={REVISION: "3"}),
        spec=k8s.V1DeploymentSpec(
            replicas=spec_replicas,
            selector=k8s.V1LabelSelector(match_labels={"app": "x"}),
            template=k8s.V1PodTemplateSpec(spec=k8s.V1PodSpec(containers=[])),
        ),
        status=k8s.V1DeploymentStatus(observed_generation=observed, **status),
    )


@pytest.mark.parametrize(
    ("status", "generation", "done", "reason"),
    [
        ({"replicas": 2, "updated_replicas": 2, "available_replicas": 2}, 2, True, "2 of 2"),
        ({"replicas": 2, "updated_replicas": 2, "available_replicas": 2}, 3, False, "observed generation 2 of 3"),
        ({"replicas": 3, "updated_replicas": 1, "available_replicas": 2}, 2, False, "1 of 2 replicas updated"),
        ({"replicas": 3, "updated_replicas": 2, "available_replicas": 2}, 2, False, "1 old replicas pending"),
        (
            {"replicas": 2, "updated_replicas": 2, "available_replicas": 1},
            2,
            False,
            "1 of 2 updated replicas available",
        ),
        (
            {"replicas": 2, "updated_replicas": 2, "available_replicas": 2, "unavailable_replicas": 1},
            2,
            False,
            "1 replicas unavailable",
        ),
    ],
)
def test_rollout_is_done_only_when_every_replica_is_new_and_available(status, generation, done, reason) -> None:
    state = rollout_state(deployment(**status), generation)
    assert state.done is done and not state.failed
    assert reason in state.reason


def test_rollout_fails_when_the_controller_gives_up() -> None:
    stuck = k8s.V1DeploymentCondition(
        type="Progressing", status="False", reason="ProgressDeadlineExceeded", message="took too long"
    )
    state = rollout_state(deployment(replicas=2, updated_replicas=1, conditions=[stuck]), 2)
    assert state.failed and "took too long" in state.reason


class FakeApps:
    """read_namespaced_deployment answers from a script of states; the last one repeats."""

    def __init__(self, states: list[k8s.V1Deployment | Exception]) -> None:
        self.states = states
        self.reads = 0

    def read_namespaced_deployment(self, name: str, namespace: str) -> k8s.V1Deployment:
        self.reads += 1
        state = self.states[min(self.reads, len(self.states)) - 1]
        if isinstance(state, Exception):
            raise state
        return state


def offline_target(apps: FakeApps, new_pods: list[k8s.V1Pod] | None = None) -> KubernetesTarget:
    target = KubernetesTarget("unused", poll_interval=0.05)
    target.__dict__["hook"] = SimpleNamespace(apps_v1_client=apps, core_v1_client=None, api_client=k8s.ApiClient())
    target.describe_pods = lambda dep: "pod d-1 (revision 3, Pending, not ready); app waiting: ImagePullBackOff"
    target.revision_pods = lambda dep: (None, list(new_pods or []))
    return target


def test_wait_for_rollout_returns_once_the_rollout_completes() -> None:
    apps = FakeApps([
        deployment(observed=1),
        deployment(replicas=2, updated_replicas=1, available_replicas=1),
        deployment(replicas=2, updated_replicas=2, available_replicas=2),
    ])  # fmt: skip
    done = offline_target(apps).wait_for_rollout("d", "ns", 2, time.monotonic() + 10)
    assert done.status.available_replicas == 2 and apps.reads == 3


def test_wait_for_rollout_rides_out_an_api_server_blip_but_not_a_refusal() -> None:
    from kubernetes.client.exceptions import ApiException

    done = deployment(replicas=2, updated_replicas=2, available_replicas=2)
    apps = FakeApps([ApiException(status=503), ApiException(status=0), done])
    assert offline_target(apps).wait_for_rollout("d", "ns", 2, time.monotonic() + 10) is done
    with pytest.raises(ApiException):
        offline_target(FakeApps([ApiException(status=403), done])).wait_for_rollout("d", "ns", 2, time.monotonic() + 10)


def test_wait_for_rollout_fails_at_the_deadline_with_the_pods_states() -> None:
    apps = FakeApps([deployment(replicas=3, updated_replicas=1, available_replicas=2)])
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        offline_target(apps).wait_for_rollout("d", "ns", 2, started + 0.5)
    assert 0.5 <= time.monotonic() - started < 2
    message = str(failed.value)
    assert "not complete by the deadline: 1 of 2 replicas updated" in message
    assert "ImagePullBackOff" in message and "revision 3" in message


# Pods are made at collection time; their ages count from this fixed instant, not from when a test runs.
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def pod(name: str, rs: str, *, waiting: tuple[str, str] | None = None, restarts: int = 0, age: float = 0) -> k8s.V1Pod:
    state = (
        k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=waiting[0], message=waiting[1]))
        if waiting
        else None
    )
    last = (
        k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=3, reason="Error"))
        if restarts
        else None
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name,
            owner_references=[k8s.V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name=rs, uid="u")],
        ),
        status=k8s.V1PodStatus(
            phase="Running",
            start_time=NOW - timedelta(seconds=age),
            conditions=[k8s.V1PodCondition(type="Ready", status="False")],
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="app",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=restarts,
                    state=state,
                    last_state=last,
                )  # fmt: skip
            ],
        ),
    )


def event(obj: str, reason: str, message: str, kind: str = "Warning", count: int = 1, age: int = 0) -> k8s.CoreV1Event:
    return k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name=f"{obj}.{reason}"),
        involved_object=k8s.V1ObjectReference(kind="Pod", name=obj),
        reason=reason,
        message=message,
        type=kind,
        count=count,
        last_timestamp=datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=age),
    )


def probe(period: int, failures: int, delay: int = 0) -> k8s.V1Probe:
    return k8s.V1Probe(period_seconds=period, failure_threshold=failures, initial_delay_seconds=delay)


def test_the_start_up_budget_is_what_the_pods_own_probes_allow() -> None:
    app = k8s.V1Container(name="app", startup_probe=probe(2, 30), readiness_probe=probe(5, 3, delay=1))
    budget = startup_budget(k8s.V1PodSpec(containers=[app]), min_ready_seconds=5)
    assert budget == 2 * 30 + 1 + 5 * 3 + 5 + STARTUP_SLACK
    assert startup_budget(k8s.V1PodSpec(containers=[k8s.V1Container(name="bare")])) == STARTUP_SLACK


@pytest.mark.parametrize(
    ("pods", "verdict"),
    [
        ([pod("n-1", "new", waiting=("CrashLoopBackOff", "back-off 10s restarting failed container"))],
         "pod n-1: app CrashLoopBackOff: back-off 10s restarting failed container"),
        ([pod("n-1", "new", waiting=("ImagePullBackOff", "Back-off pulling image"))], "app ImagePullBackOff"),
        ([pod("n-1", "new", restarts=2)], "pod n-1: app restarted 2 times, last exit 3 (Error)"),
        ([pod("n-1", "new", age=200)], "s after it started (its start-up budget is 95s)"),
        ([pod("n-1", "new", waiting=("ErrImagePull", "a registry blip")), pod("n-2", "new", restarts=1, age=30)],
         None),  # a first pull error, one restart, a pod still within its budget: not yet hopeless
    ],
)  # fmt: skip
def test_a_new_revision_is_hopeless_only_when_waiting_cannot_help(pods, verdict) -> None:
    cause = hopeless(pods, budget=95, now=NOW)
    assert (cause is None) if verdict is None else (verdict in cause), cause


def test_wait_for_rollout_fails_fast_on_a_crash_looping_revision_long_before_the_deadline() -> None:
    apps = FakeApps([deployment(replicas=3, updated_replicas=1, available_replicas=2)])
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        offline_target(apps, [pod("n-1", "new", restarts=3)]).wait_for_rollout("d", "ns", 2, started + 600)
    assert time.monotonic() - started < 5
    assert "the new revision cannot come up: pod n-1: app restarted 3 times, last exit 3" in str(failed.value)
    # Not before the controller works on the new generation: the pods then are the old revision's.
    early = FakeApps([deployment(observed=1), deployment(replicas=2, updated_replicas=2, available_replicas=2)])
    assert offline_target(early, [pod("old-1", "old", restarts=5)]).wait_for_rollout("d", "ns", 2, started + 600)


def test_failure_summary_names_each_pods_trouble_and_the_warnings() -> None:
    pods = [
        pod("app-new-1", "app-new", waiting=("ImagePullBackOff", 'Back-off pulling image "r@sha256:00"')),
        pod("app-crash-1", "app-crash", waiting=("CrashLoopBackOff", "back-off 20s"), restarts=4),
    ]
    events = [
        event("app-new-1", "Failed", "Failed to pull image: not found", count=3),
        event("app-crash-1", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503", age=5),
        event("app-crash-1", "Pulled", "Successfully pulled", kind="Normal"),
        event("someone-else", "Failed", "not ours"),
    ]
    text = summarize_pods(pods, {"app-new": 5, "app-crash": 4}, events)
    assert "pod app-new-1 (revision 5, Running, not ready); app waiting: ImagePullBackOff" in text
    assert "app waiting: CrashLoopBackOff: back-off 20s; app restarted 4x, last exit 3 (Error)" in text
    assert "Failed x3: Failed to pull image: not found" in text
    assert "Readiness probe failed: HTTP probe failed with statuscode: 503" in text
    assert "not ours" not in text and "Successfully pulled" not in text
    assert text.index("Failed to pull") < text.index("Readiness probe")  # newest first


def rendered_local() -> list[dict[str, Any]]:
    return KubernetesTarget("unused").render(REPO / "k8s" / "overlays" / "local", f"r.example/app@{DIGEST}", LINEAGE)


def test_render_pins_the_image_by_digest_and_annotates_every_revision() -> None:
    objects = rendered_local()
    [dep] = [o for o in objects if o["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"r.example/app@{DIGEST}"
    expected = {
        ANN_COMMIT: LINEAGE["commit"],
        ANN_MODEL_VERSION: "v7",
        ANN_MODEL_SHA256: LINEAGE["model_sha256"],
        ANN_IMAGE_DIGEST: DIGEST,
    }
    # On the Deployment (copied to each ReplicaSet) and on the pod template (each pod).
    assert dep["metadata"]["annotations"].items() >= expected.items()
    assert dep["spec"]["template"]["metadata"]["annotations"] == expected
    assert "modelship-registry" in json.dumps(objects) and "password" not in json.dumps(objects).lower()


@pytest.mark.parametrize(
    ("image", "lineage", "error"),
    [
        ("r.example/app:latest", LINEAGE, "by digest"),
        (f"r.example/app@sha256:{'cd' * 32}", LINEAGE, "does not match the lineage"),
        (f"r.example/app@{DIGEST}", {"model_version": "v7"}, "commit"),
    ],
)
def test_render_refuses_what_it_cannot_prove(image: str, lineage: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        KubernetesTarget("unused").render(REPO / "k8s" / "overlays" / "local", image, lineage)


def test_render_refuses_secrets_and_unknown_kinds() -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}}}  # fmt: skip
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}}
    with pytest.raises(RenderFailed, match="Secret"):
        pin_and_annotate([dep, secret], f"r/app@{DIGEST}", LINEAGE)
    with pytest.raises(RenderFailed, match="unsupported"):
        pin_and_annotate([dep, ingress], f"r/app@{DIGEST}", LINEAGE)
    with pytest.raises(RenderFailed, match="exactly one Deployment"):
        pin_and_annotate([dep, dep], f"r/app@{DIGEST}", LINEAGE)


def test_render_failure_says_what_kustomize_said(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(RenderFailed, match="missing.yaml"):
        KubernetesTarget("unused").render(tmp_path, f"r/app@{DIGEST}", LINEAGE)


def test_pull_secret_config_names_the_registry_the_way_the_kubelet_looks_it_up() -> None:
    server, raw = dockerconfigjson("https://reg.example:5000/", None, "bot", "s3cret")
    assert server == "reg.example:5000"
    auths = json.loads(raw)["auths"]
    assert base64.b64decode(auths["reg.example:5000"]["auth"]) == b"bot:s3cret"
    assert dockerconfigjson("127.0.0.1", 5001, "u", "p")[0] == "127.0.0.1:5001"


# --- the real cluster (opt-in) ------------------------------------------------------------------------------

K8S_CONN = "modelship_test_kubernetes"
REGISTRY_CONN = "modelship_test_k8s_registry"


@pytest.fixture(scope="module")
def cluster_env(k8s_cluster, registry: components.Registry) -> Iterator[None]:
    """Airflow connections as a deployment defines them: kubeconfig content in the kubernetes conn's extra."""
    conns = components.airflow_connections({K8S_CONN: k8s_cluster.connection, REGISTRY_CONN: registry.connection})
    with pytest.MonkeyPatch.context() as patch:
        for key, value in conns.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def push(standin, docker_client, registry: components.Registry):
    """push(key, **standin options) → (stand-in, repository@digest in the real registry)."""
    auth = {"username": registry.username, "password": registry.password}
    repository = f"{registry.address}/modelship-test/standin"

    def push_one(key: str, **options: str):
        image = standin(key, **options)
        docker_client.images.get(image.id).tag(repository, tag=key)
        digest = None
        for line in docker_client.images.push(repository, tag=key, auth_config=auth, stream=True, decode=True):
            assert "error" not in line, line
            digest = line.get("aux", {}).get("Digest", digest)
        assert digest, "the registry returned no digest"
        return image, f"{repository}@{digest}"

    return push_one


@pytest.fixture(scope="module")
def namespace(cluster_env) -> Iterator[str]:
    name = f"modelship-test-{uuid.uuid4().hex[:8]}"
    yield name
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client.exceptions import ApiException

    try:
        KubernetesHook(conn_id=K8S_CONN).core_v1_client.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:  # never created: a test failed before its first deploy
            raise


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local overlay on a free port (the cluster and its host network are shared with others)."""
    return local_overlay_on(tmp_path_factory.mktemp("overlay"), net.free_port())


@pytest.fixture(scope="module")
def target(cluster_env, namespace: str, overlay: Path) -> KubernetesTarget:
    return KubernetesTarget(
        K8S_CONN,
        namespace=namespace,
        overlay_dir=overlay,
        registry_conn_id=REGISTRY_CONN,
        poll_interval=1.0,
        rollout_timeout=120,  # rollbacks; each test gives its deploy a deadline of its own
    )


@pytest.fixture(scope="module")
def released(target: KubernetesTarget, push) -> dict[str, Any]:
    """v1, then v2: the state every later test starts from and must leave behind (v2 serving)."""
    v1, v1_ref = push("v1")
    first = target.deploy(v1_ref, v1.lineage(), timeout=180)
    first_status = target.status()
    v2, v2_ref = push("v2")
    second = target.deploy(v2_ref, v2.lineage(), timeout=120)
    return {"v1": v1, "v1_ref": v1_ref, "first": first, "first_status": first_status,
            "v2": v2, "v2_ref": v2_ref, "second": second}  # fmt: skip


def assert_v2_serves(target: KubernetesTarget, released: dict[str, Any]) -> None:
    v2 = released["v2"]
    status = target.status()
    assert status["serving"] and status["commit"] == v2.commit and status["image"] == released["v2_ref"], status
    answers = target.verify("modelship-app", target.namespace, v2.commit, v2.model_version)
    assert [a["commit"] for a in answers] == [v2.commit]


@pytest.mark.k8s
def test_first_release_serves_v1_and_the_pods_say_so_through_the_api_server(released) -> None:
    v1, first, status = released["v1"], released["first"], released["first_status"]
    assert first == DeploymentEvent(target="kubernetes", image_digest=released["v1_ref"].split("@")[1],
                                    image=released["v1_ref"], commit=v1.commit, model_version=v1.model_version,
                                    revision="1", model_sha256=v1.model_sha256)  # fmt: skip
    assert status["revision"] == 1 and status["commit"] == v1.commit and status["model_version"] == v1.model_version
    assert status["model_sha256"] == v1.model_sha256 and status["since"]


@pytest.mark.k8s
def test_second_release_is_a_new_revision_and_each_revision_keeps_its_lineage(released, target) -> None:
    assert released["second"].revision == "2"
    assert_v2_serves(target, released)
    sets = target.hook.apps_v1_client.list_namespaced_replica_set(target.namespace).items
    by_revision = {int(rs.metadata.annotations[REVISION]): rs.metadata.annotations for rs in sets}
    assert by_revision[1][ANN_COMMIT] == released["v1"].commit
    assert by_revision[2][ANN_COMMIT] == released["v2"].commit
    assert by_revision[2][ANN_IMAGE_DIGEST] == released["v2_ref"].split("@")[1]
    pods = target.hook.core_v1_client.list_namespaced_pod(target.namespace).items
    assert {p.metadata.annotations[ANN_COMMIT] for p in pods if not p.metadata.deletion_timestamp} == {
        released["v2"].commit
    }


@pytest.mark.k8s
def test_pull_secret_is_written_from_the_connection_and_never_logged(released, target, registry) -> None:
    secret = target.hook.core_v1_client.read_namespaced_secret("modelship-registry", target.namespace)
    assert secret.type == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))["auths"]
    assert auths[registry.address]["username"] == registry.username
    with log_messages("modelship", logging.DEBUG) as ours, log_messages("kubernetes", logging.DEBUG) as theirs:
        target.ensure_pull_secret(target.namespace, REGISTRY_CONN)
    assert not any(registry.password in m for m in ours + theirs)
    assert any("modelship-registry" in m for m in ours)


@pytest.mark.k8s
def test_applying_the_same_release_again_changes_nothing(released, target) -> None:
    apps = target.hook.apps_v1_client
    before = apps.read_namespaced_deployment("modelship-app", target.namespace)
    since = target.status()["since"]
    objects = target.render(target.overlay_dir, released["v2_ref"], released["v2"].lineage())
    for obj in objects:
        obj["metadata"]["namespace"] = target.namespace
        if obj["kind"] == "Deployment":  # what deploy() would stamp: the live value for the same build
            obj["metadata"]["annotations"][ANN_DEPLOYED_AT] = since
    applied = target.apply(objects)
    assert [o.metadata.generation for o in applied if o.kind == "Deployment"] == [before.metadata.generation]
    again = target.deploy(released["v2_ref"], released["v2"].lineage(), timeout=60)
    assert again.revision == "2"
    assert target.status()["since"] == since
    assert len(apps.list_namespaced_replica_set(target.namespace).items) == 2


@pytest.mark.k8s
def test_a_release_that_never_gets_ready_is_rolled_back(released, target, push) -> None:
    bad, ref = push("never-ready", broken="readyz")
    started = time.monotonic()
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(ref, bad.lineage(), timeout=30)
    message = str(failed.value)
    assert "not complete by the deadline" in message, message
    assert "probe failed" in message, message  # the kubelet's own words, from the pod's events
    assert "rolled back to revision 2" in message and f"serving commit {released['v2'].commit}" in message, message
    assert time.monotonic() - started < 150
    assert_v2_serves(target, released)


@pytest.mark.k8s
def test_a_deploy_waits_for_pods_of_an_earlier_rollout_that_are_still_terminating(released, target) -> None:
    """A terminating pod still holds the host port (local overlay): applying then would leave the new pod
    Pending on "didn't have free ports" and roll back a good image. Held here by a finalizer we remove."""
    import threading

    core = target.hook.core_v1_client
    live = target.hook.apps_v1_client.read_namespaced_deployment("modelship-app", target.namespace)
    held = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name="held-terminating", labels=live.spec.selector.match_labels, finalizers=["modelship.test/hold"]
        ),
        # Never scheduled (no node has the label): it only has to exist and be terminating.
        spec=k8s.V1PodSpec(node_selector={"modelship.test/nowhere": "1"},
                           containers=[k8s.V1Container(name="c", image="unused")]),
    )  # fmt: skip
    core.create_namespaced_pod(target.namespace, held)
    core.delete_namespaced_pod("held-terminating", target.namespace)

    with log_messages("modelship.deploy") as messages:

        def release() -> None:
            # Once the deploy says it waits for the pod (not after a guessed delay), the pod may go.
            deadline = time.monotonic() + 120
            while not any("waiting for terminating pods" in m for m in messages) and time.monotonic() < deadline:
                time.sleep(0.1)
            messages.append("(test) released held-terminating")
            core.patch_namespaced_pod("held-terminating", target.namespace, {"metadata": {"finalizers": None}})

        releaser = threading.Thread(target=release)
        releaser.start()
        try:
            event = target.deploy(released["v2_ref"], released["v2"].lineage(), timeout=60)
        finally:
            releaser.join()
    waited = next(i for i, m in enumerate(messages) if "waiting for terminating pods" in m)
    assert "held-terminating" in messages[waited], messages
    # Nothing was applied while the pod held on: the apply came after its release.
    applied = next(i for i, m in enumerate(messages) if m.startswith("applied Deployment"))
    assert waited < messages.index("(test) released held-terminating") < applied, messages
    assert event.commit == released["v2"].commit
    assert_v2_serves(target, released)


@pytest.mark.k8s
def test_an_unpullable_image_is_rolled_back(released, target) -> None:
    missing = released["v2_ref"].split("@")[0] + "@sha256:" + "0" * 64
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(missing, released["v2"].lineage(), timeout=30)
    message = str(failed.value)
    assert "ErrImagePull" in message or "ImagePullBackOff" in message, message
    assert f"serving commit {released['v2'].commit}" in message, message
    assert_v2_serves(target, released)


@pytest.mark.k8s
def test_a_crash_looping_rollout_fails_fast_with_its_exit_code_and_rollback_undoes_it(released, target, push) -> None:
    bad, ref = push("crashes", broken="exit")
    objects = target.render(target.overlay_dir, ref, bad.lineage())
    for obj in objects:
        obj["metadata"]["namespace"] = target.namespace
    [dep] = [o for o in target.apply(objects) if o.kind == "Deployment"]
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        target.wait_for_rollout("modelship-app", target.namespace, dep.metadata.generation, started + 300)
    assert time.monotonic() - started < 90  # a verdict as soon as it crash-loops, not at the deadline
    message = str(failed.value)
    assert "the new revision cannot come up" in message and "exit 1" in message, message
    back = target.rollback("modelship-app", target.namespace)
    assert back["commit"] == released["v2"].commit and back["image"] == released["v2_ref"]
    assert_v2_serves(target, released)


@pytest.mark.k8s
def test_a_release_that_serves_the_wrong_build_is_rolled_back(released, target, push) -> None:
    liar, ref = push("liar", reports_commit="f" * 40)
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(ref, liar.lineage(), timeout=90)
    message = str(failed.value)
    assert f"/version reports commit {'f' * 40} != expected {liar.commit}" in message, message
    assert f"serving commit {released['v2'].commit}" in message, message
    assert_v2_serves(target, released)
