"""The docker target on the real engine: a release replaces the serving container only with a verified
one, and every kind of bad release leaves the previous one serving on the fixed port, with nothing left
behind. Stand-in images (deploy_fixtures.py) play the app."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any

import pytest

from devstack import components
from modelship import lineage, net
from modelship.deploy import DeploymentFailed
from modelship.deploy.docker import DockerTarget

pytestmark = [pytest.mark.docker]
pytest_plugins = ["deploy_fixtures"]


def serving(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as response:
        return json.load(response)


def modelship_containers(docker_client, port: int, role: str | None = None) -> list:
    """modelship's containers of the target on `port` (other suites' targets may share the engine)."""
    labels = [f"{lineage.CONTAINER_PORT}={port}", lineage.CONTAINER_ROLE + (f"={role}" if role else "")]
    return docker_client.containers.list(all=True, filters={"label": labels})


@pytest.fixture(scope="module")
def port() -> int:
    return net.free_port()


@pytest.fixture(scope="module")
def target(docker_engine: components.DockerEngine, port: int) -> DockerTarget:
    return DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=15)


@pytest.fixture(scope="module")
def v2_serving(target: DockerTarget, standin, docker_client, port: int):
    """v1 deployed, then v2 over it; yields (v1, v2, v2's deployment event). Cleans up the engine after."""
    v1, v2 = standin("v1"), standin("v2")
    first = target.deploy(v1.tag, v1.lineage())
    assert serving(port)["commit"] == v1.commit
    second = target.deploy(v2.tag, v2.lineage())
    yield v1, v2, first, second
    for container in modelship_containers(docker_client, port):
        container.remove(force=True)


def the_serving_container(docker_client, port: int):
    apps = [c for c in modelship_containers(docker_client, port, "app") if c.status == "running"]
    assert len(apps) == 1, [c.name for c in apps]
    return apps[0]


def test_v2_replaces_v1_on_the_fixed_port(v2_serving, port: int, docker_client) -> None:
    v1, v2, first, second = v2_serving
    answer = serving(port)
    assert answer["commit"] == v2.commit and answer["model"]["version"] == v2.model_version
    assert second.commit == v2.commit and second.model_version == v2.model_version
    assert second.image_digest == v2.id and second.target == "docker"
    # v1's container is gone, and no candidate was left behind.
    containers = modelship_containers(docker_client, port)
    assert [c.name for c in containers] == [f"modelship-app-{v2.id.split(':')[1][:12]}"]
    assert containers[0].id.startswith(second.revision)


def test_the_serving_container_is_locked_down_and_labelled(v2_serving, docker_client, port: int) -> None:
    _, v2, _, _ = v2_serving
    container = the_serving_container(docker_client, port)
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "/tmp" in host["Tmpfs"]
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert container.attrs["Config"]["User"] == "10001"  # from the image: the target must not override it
    labels = container.labels
    assert labels["io.modelship.role"] == "app"
    assert labels["io.modelship.commit"] == v2.commit
    assert labels["io.modelship.model.version"] == v2.model_version
    assert labels["io.modelship.model.sha256"] == v2.model_sha256
    assert labels["io.modelship.image.digest"] == v2.id
    assert labels["io.modelship.port"] == str(port)
    assert labels["io.modelship.deployed-at"]


def test_status_answers_from_the_engine(v2_serving, target: DockerTarget, docker_engine, port: int) -> None:
    _, v2, _, second = v2_serving
    # A fresh target object: nothing remembered in Python, only the engine's labels.
    status = DockerTarget(docker_host=docker_engine.url, port=port).status()
    assert status["serving"] is True
    assert status["commit"] == v2.commit and status["model_version"] == v2.model_version
    assert status["image_digest"] == v2.id and status["revision"] == second.revision
    assert status["since"]


def test_status_on_a_port_nothing_serves(docker_engine) -> None:
    status = DockerTarget(docker_host=docker_engine.url, port=net.free_port()).status()
    assert status["serving"] is False and status["target"] == "docker"


def test_redeploying_the_serving_image_leaves_it_alone(
    v2_serving, target: DockerTarget, docker_client, port: int
) -> None:
    _, v2, _, second = v2_serving
    before = the_serving_container(docker_client, port)
    again = target.deploy(v2.tag, v2.lineage())
    after = the_serving_container(docker_client, port)
    assert again.revision == second.revision
    assert after.id == before.id and after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]


@pytest.mark.parametrize(
    ("key", "broken", "lie", "expected"),
    [
        ("never-ready", "readyz", False, "/readyz"),
        ("exits", "exit", False, "exited with code 1"),
        ("wrong-build", "", True, "/version reports commit"),
    ],
)
def test_a_bad_image_fails_as_a_candidate_and_v2_keeps_serving(
    v2_serving, target: DockerTarget, standin, docker_client, port: int, key, broken, lie, expected
) -> None:
    _, v2, _, _ = v2_serving
    bad = standin(key, broken=broken, reports_commit="f" * 40 if lie else "")
    before = the_serving_container(docker_client, port)
    started = time.monotonic()
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(bad.tag, bad.lineage())
    message = str(failed.value)
    assert expected in message, message
    assert "keeps serving" in message and v2.commit in message
    if broken == "exit":  # a crash is seen at once, not after the readiness timeout
        assert time.monotonic() - started < target.ready_timeout
    # v2 was never stopped: same container, same start, still answering on the fixed port.
    after = the_serving_container(docker_client, port)
    assert after.id == before.id and after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert serving(port)["commit"] == v2.commit
    assert modelship_containers(docker_client, port, "candidate") == []
    assert len(modelship_containers(docker_client, port)) == 1


def test_failure_on_the_serving_port_leaves_v2_serving_never_stopped(
    v2_serving, docker_engine, standin, docker_client, port: int
) -> None:
    _, v2, _, _ = v2_serving
    # Healthy as a candidate on a spare port, dies on the fixed one: only serving beside v2 can catch it.
    fragile = standin("fragile", broken=f"port:{port}")
    before = the_serving_container(docker_client, port)
    target = DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=15)
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(fragile.tag, fragile.lineage())
    message = str(failed.value)
    assert "failed beside the serving container" in message and "never stopped" in message, message
    after = the_serving_container(docker_client, port)
    assert after.id == before.id and after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert serving(port)["commit"] == v2.commit
    assert target.status()["commit"] == v2.commit
    assert len(modelship_containers(docker_client, port)) == 1


def test_images_that_cannot_share_the_port_are_swapped_and_a_failure_rolls_back(
    v2_serving, docker_engine, standin, docker_client, port: int
) -> None:
    _, v2, _, _ = v2_serving
    target = DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=15)
    # An image from before SO_REUSEPORT cannot bind beside v2: the release swaps instead (a short gap).
    legacy = standin("legacy", reuse_port=False)
    event = target.deploy(legacy.tag, legacy.lineage())
    assert event.commit == legacy.commit and serving(port)["commit"] == legacy.commit
    assert len(modelship_containers(docker_client, port)) == 1
    # Swapping to one that dies on the serving port: the old container itself comes back (not a copy).
    before = the_serving_container(docker_client, port)
    fragile = standin("fragile-legacy", broken=f"port:{port}", reuse_port=False)
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(fragile.tag, fragile.lineage())
    assert "failed on the serving port" in str(failed.value) and "rolled back" in str(failed.value), failed.value
    after = the_serving_container(docker_client, port)
    assert after.id == before.id and after.name == before.name
    assert serving(port)["commit"] == legacy.commit
    # And back to v2 (it shares the port; the legacy one does not): swapped too.
    assert target.deploy(v2.tag, v2.lineage()).commit == v2.commit and serving(port)["commit"] == v2.commit


def test_lineage_that_contradicts_the_image_labels_is_refused(v2_serving, target: DockerTarget, standin) -> None:
    v3 = standin("v3")
    with pytest.raises(DeploymentFailed, match="labelled commit"):
        target.deploy(v3.tag, v3.lineage(commit="0" * 40))


def test_a_port_held_by_a_stranger_is_not_taken_over(docker_engine, standin) -> None:
    v1 = standin("v1")
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        target = DockerTarget(docker_host=docker_engine.url, port=stranger.getsockname()[1], ready_timeout=15)
        with pytest.raises(DeploymentFailed, match="not a modelship app container"):
            target.deploy(v1.tag, v1.lineage())


def test_modelship_status_prints_what_serves(v2_serving, docker_engine, port: int, monkeypatch, capsys) -> None:
    from modelship.cli import main

    _, v2, _, _ = v2_serving
    monkeypatch.setenv("MODELSHIP_DOCKER_HOST", docker_engine.url)
    monkeypatch.setenv("MODELSHIP_DOCKER_DEPLOY_PORT", str(port))
    assert main(["status", "--target", "docker", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["commit"] == v2.commit and status["image_digest"] == v2.id and status["serving"] is True
    assert main(["status", "--target", "docker"]) == 0
    text = capsys.readouterr().out
    assert f"commit         {v2.commit}" in text and f"model version  {v2.model_version}" in text
    assert "since" in text and v2.id in text


def test_two_targets_on_one_engine_leave_each_other_alone(v2_serving, docker_engine, standin, port: int) -> None:
    _, v2, _, _ = v2_serving
    v1 = standin("v1")
    other = DockerTarget(docker_host=docker_engine.url, port=net.free_port(), ready_timeout=15)
    try:
        other.deploy(v1.tag, v1.lineage())
        assert serving(other.port)["commit"] == v1.commit
        assert serving(port)["commit"] == v2.commit
        assert other.status()["commit"] == v1.commit
        assert DockerTarget(docker_host=docker_engine.url, port=port).status()["commit"] == v2.commit
    finally:
        for container in other._containers("app"):
            other._remove(container["Id"])
