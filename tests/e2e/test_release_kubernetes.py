"""The release DAG on the kubernetes target, end to end on the local cluster (devstack/k8s-local): the real app
images built by the ci DAG, pulled by the kubelet from the real registry with the imagePullSecret the release
writes, verified through the API server's pod proxy; a broken image rolled back and quarantined.

Its own source clone and model store container, so what the docker story did does not move the desired
state here: v1 → v2 → broken v3 (rolled back, quarantined, the next release skipped with no pod made) → v4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.load import ConstantLoad, sample_request
from modelship import net
from modelship.history import parse_time
from tests.e2e.pipeline import REPO, announce_image, asset_events, git, push_broken, run_dag, task_states, why
from tests.k8s.conftest import local_overlay_on

pytest_plugins = ["tests.k8s.conftest"]
pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite, pytest.mark.k8s]


def status() -> dict[str, Any]:
    binary = Path(sys.executable).parent / "modelship"
    done = subprocess.run([str(binary), "status", "--target", "kubernetes", "--no-desired", "--json"],
                          capture_output=True, text=True, timeout=120, env=os.environ)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cluster_env(k8s_cluster, pipeline_env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The release DAG pointed at the local cluster as `make up K8S=1` points it: the kubernetes connection with
    the kubeconfig's content, the local overlay (on a free port here: the node's network is shared)."""
    port = net.free_port()
    overlay = local_overlay_on(tmp_path_factory.mktemp("overlay"), port)
    source = tmp_path_factory.mktemp("k8s-source") / "repo"
    git("clone", "-q", "--no-hardlinks", str(REPO), str(source))
    git("checkout", "-q", "-B", "main", git("rev-parse", "HEAD"), cwd=source)
    namespace = f"modelship-e2e-{uuid.uuid4().hex[:8]}"
    env = {
        "AIRFLOW_CONN_MODELSHIP_KUBERNETES": json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config": k8s_cluster.kubeconfig.read_text()}}
        ),
        "MODELSHIP_KUBE_OVERLAY": str(overlay),
        "MODELSHIP_KUBE_NAMESPACE": namespace,
        "MODELSHIP_MODEL_STORE": f"wasb:e2e-k8s-{uuid.uuid4().hex[:8]}",
        "MODELSHIP_SOURCE_REPO": str(source),
        "MODELSHIP_ROLLOUT_TIMEOUT": "150",
        "MODELSHIP_DEPLOY_TARGET": "kubernetes",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield {**env, "port": str(port), "commit": git("rev-parse", "HEAD")}
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        KubernetesHook(conn_id="modelship_kubernetes").core_v1_client.delete_namespace(namespace)


def pods(namespace: str) -> set[str]:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    found = KubernetesHook(conn_id="modelship_kubernetes").core_v1_client.list_namespaced_pod(namespace).items
    return {pod.metadata.uid for pod in found}


@pytest.fixture(scope="module")
def story(cluster_env, trained, docker_client, registry) -> dict[str, Any]:
    from modelship.model_store import open_store

    store = open_store()
    commit = cluster_env["commit"]
    out: dict[str, Any] = {"served": []}

    def released(**conf: Any):
        run = run_dag("release", {"target": "kubernetes", **conf})
        out["served"].append((run, status()))
        return run

    def released_under_load(name: str):
        """A release while clients send a steady 60 requests a second to the app's port on the node."""
        with ConstantLoad(int(cluster_env["port"]), sample_request(), rate=60.0) as load:
            time.sleep(2)  # steady state first
            run = released()
            time.sleep(2)
        out.setdefault("load", {})[name] = load.summary()
        print(f"kubernetes, {name}: {load.summary()}", flush=True)
        return run

    def ci() -> dict[str, Any]:
        run = run_dag("ci", {"commit": commit})
        assert str(run.state) == "success", why(run)
        return asset_events("image")[-1]

    for version in ("v1", "v2"):
        store.publish(trained[version])
        store.promote("digits", version)
        out[version] = ci()
        run = released() if version == "v1" else released_under_load(version)  # v1: nothing served before
        assert str(run.state) == "success", why(run)

    store.publish(trained["v3"])
    store.promote("digits", "v3")
    sha = store.manifest_sha256("digits", "v3")
    base = f"{out['v2']['repository']}@{out['v2']['digest']}"
    tag = f"{commit[:12]}-v3"
    broken = push_broken(docker_client, registry, base, tag,
                         {"io.modelship.model.version": "v3", "io.modelship.model.sha256": sha})  # fmt: skip
    announce_image({**out["v2"], "tag": tag, "digest": broken, "model_version": "v3", "model_sha256": sha})
    out["broken"] = broken
    out["broken_run"] = released_under_load("broken v3")
    before = pods(cluster_env["MODELSHIP_KUBE_NAMESPACE"])
    out["skipped_run"] = released()
    out["pods_before_after_skip"] = (before, pods(cluster_env["MODELSHIP_KUBE_NAMESPACE"]))

    store.publish(trained["v4"])
    store.promote("digits", "v4")
    out["v4"] = ci()
    out["v4_run"] = released()
    return out


def test_v1_then_v2_go_out_to_the_cluster_verified(story) -> None:
    (_, first), (_, second) = story["served"][:2]
    assert first["serving"] and first["image_digest"] == story["v1"]["digest"] and first["model_version"] == "v1"
    assert second["serving"] and second["image_digest"] == story["v2"]["digest"] and second["model_version"] == "v2"


def test_a_broken_image_is_rolled_back_quarantined_and_left_alone_by_the_next_release(story) -> None:
    run = story["broken_run"]
    states = task_states(run)
    assert str(run.state) == "failed" and states["deploy"] == "failed", states
    assert states["record"] == "success" and states["quarantine"] == "success", states
    _, after = story["served"][2]
    assert after["image_digest"] == story["v2"]["digest"] and after["model_version"] == "v2", after
    [held] = [e for e in asset_events("quarantine") if e["digest"] == story["broken"]]
    assert held["target"] == "kubernetes" and "rolled back" in held["reason"], held
    [record] = [e for e in asset_events("deployments") if e["run_id"] == run.run_id]
    assert record["outcome"] == "rolled_back" and record["serving_after"]["image_digest"] == story["v2"]["digest"]

    skipped = story["skipped_run"]
    assert str(skipped.state) == "success" and task_states(skipped)["select_image"] == "skipped"
    _, still = story["served"][3]
    assert still["image_digest"] == story["v2"]["digest"]
    before, after_skip = story["pods_before_after_skip"]
    assert after_skip == before  # not one pod made (or removed) by the skipped release


@pytest.mark.parametrize("name", ["v2", "broken v3"])
def test_a_release_to_the_cluster_under_steady_load_drops_no_request(story, name: str) -> None:
    # (a) v1 → v2: the new pod shares the port, the old one drains; (b) a crash-looping image, rolled back.
    load = story["load"][name]
    assert load["sent"] >= 240 and load["rate"] >= 50, load
    assert (load["failed"], load["connection_errors"]) == (0, 0), load


def test_a_crash_looping_image_is_rolled_back_within_90_seconds_of_the_release_starting(story) -> None:
    [record] = [e for e in asset_events("deployments") if e["run_id"] == story["broken_run"].run_id]
    assert record["outcome"] == "rolled_back"
    took = (parse_time(record["ended_at"]) - parse_time(record["started_at"])).total_seconds()
    assert took < 90, record
    assert "cannot come up" in record["reason"], record["reason"]


def test_a_fixed_version_is_released_after_the_quarantine(story) -> None:
    assert str(story["v4_run"].state) == "success", why(story["v4_run"])
    _, now = story["served"][4]
    assert now["image_digest"] == story["v4"]["digest"] and now["model_version"] == "v4"
