"""Retention and the kubernetes target, on the real local cluster (opt-in: MODELSHIP_K8S=1, tests/k8s/conftest.py):
the ReplicaSets a Deployment keeps for `rollout undo` are builds the target can return to by itself, so their
images are protected beside the one that serves."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import components
from modelship import net
from modelship.deploy.kubernetes import KubernetesTarget
from modelship.retention import gather
from modelship.settings import Settings
from tests.k8s.conftest import local_overlay_on

pytest_plugins = ["deploy_fixtures", "tests.k8s.conftest"]
pytestmark = [pytest.mark.k8s, pytest.mark.docker, pytest.mark.registry]

K8S_CONN, REGISTRY_CONN = "modelship_test_gc_kubernetes", "modelship_test_gc_k8s_registry"


@pytest.fixture
def namespace(k8s_cluster, registry: components.Registry, tmp_path: Path, monkeypatch) -> Iterator[str]:
    conns = components.airflow_connections({K8S_CONN: k8s_cluster.connection, REGISTRY_CONN: registry.connection})
    for key, value in conns.items():
        monkeypatch.setenv(key, value)
    name = f"modelship-test-gc-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=source, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "--allow-empty",
                    "-m", "one"], cwd=source, check=True)  # fmt: skip
    for key, value in {
        "MODELSHIP_STATE": str(tmp_path / "state"), "MODELSHIP_MODEL_STORE": f"local:{tmp_path / 'store'}",
        "MODELSHIP_SOURCE_REPO": str(source), "MODELSHIP_SOURCE_BRANCH": "main", "MODELSHIP_KUBE_CONN_ID": K8S_CONN,
        "MODELSHIP_KUBE_NAMESPACE": name, "MODELSHIP_REGISTRY_CONN_ID": REGISTRY_CONN,
        "MODELSHIP_KUBE_OVERLAY": str(local_overlay_on(tmp_path, net.free_port())),
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    yield name
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    KubernetesHook(conn_id=K8S_CONN).core_v1_client.delete_namespace(name)


def push(standin, docker_client, registry: components.Registry, key: str):
    image = standin(key)
    repository = f"{registry.address}/modelship-test/standin"
    docker_client.images.get(image.id).tag(repository, tag=key)
    auth = {"username": registry.username, "password": registry.password}
    digest = None
    for line in docker_client.images.push(repository, tag=key, auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
        digest = line.get("aux", {}).get("Digest", digest)
    return image, f"{repository}@{digest}", digest


def test_the_replica_sets_kept_for_rollback_protect_their_images(namespace, standin, docker_client, registry) -> None:
    settings = Settings.get()
    target = KubernetesTarget(K8S_CONN, namespace=namespace, overlay_dir=settings.overlay_dir,
                              registry_conn_id=REGISTRY_CONN, poll_interval=1.0)  # fmt: skip
    v1, v1_ref, v1_digest = push(standin, docker_client, registry, "gc-v1")
    target.deploy(v1_ref, v1.lineage(), timeout=180)
    v2, v2_ref, v2_digest = push(standin, docker_client, registry, "gc-v2")
    target.deploy(v2_ref, v2.lineage(), timeout=180)

    kept = {build["image_digest"]: build for build in target.revisions()}
    assert set(kept) == {v1_digest, v2_digest}
    assert kept[v1_digest]["model_version"] == v1.model_version and "(revision 1)" in kept[v1_digest]["where"]

    protections = gather(settings, images=[], quarantines=[], records=[], targets=("kubernetes",))
    assert protections.images[v2_digest] == ["serving on kubernetes"]
    assert protections.images[v1_digest] == [f"kept by the kubernetes target to return to: {kept[v1_digest]['where']}"]
