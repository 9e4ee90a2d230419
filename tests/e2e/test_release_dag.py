"""The release DAG on the docker target, end to end: v1, then v2, then a broken image that must not
replace v2. Real images built by the ci DAG, the real registry and Docker engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.pipeline import asset_events, run_dag, task_states

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]


def serving_version(port: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as response:
        return json.load(response)


def modelship_status() -> dict[str, Any]:
    cli = Path(sys.executable).parent / "modelship"
    out = subprocess.run([str(cli), "status", "--target", "docker", "--json"], capture_output=True, text=True,
                         env=os.environ, check=True)  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def released(ci_v1, pipeline_env: dict[str, str], trained: dict[str, Path]):
    """Release v1; then promote model v2, build it with ci and release it. Returns both CI image events."""
    commit, ci_run = ci_v1
    assert str(ci_run.state) == "success"
    first = run_dag("release", {"target": "docker"})
    assert str(first.state) == "success", task_states(first)
    v1_event = asset_events("deployment")[-1]
    v1_version = serving_version(pipeline_env["MODELSHIP_DOCKER_DEPLOY_PORT"])

    from modelship.model_store import open_store

    store = open_store()
    store.publish(trained["v2"])
    store.promote("digits", "v2", "production")
    ci_v2 = run_dag("ci", {"commit": commit})
    assert str(ci_v2.state) == "success", task_states(ci_v2)
    second = run_dag("release", {"target": "docker"})
    assert str(second.state) == "success", task_states(second)
    yield {"commit": commit, "v1_event": v1_event, "v1_version": v1_version, "image": asset_events("image")[-1]}
    import docker

    client = docker.DockerClient(base_url=pipeline_env["MODELSHIP_DOCKER_HOST"])
    for container in client.containers.list(all=True, filters={"label": "io.modelship.role=app"}):
        container.remove(force=True)


def test_release_deploys_the_newest_image_that_passed_ci(released, pipeline_env) -> None:
    assert released["v1_version"]["model"]["version"] == "v1"
    assert released["v1_version"]["commit"] == released["commit"]
    assert released["v1_event"]["model_version"] == "v1"
    now = serving_version(pipeline_env["MODELSHIP_DOCKER_DEPLOY_PORT"])
    assert now["model"]["version"] == "v2" and now["commit"] == released["commit"]
    event = asset_events("deployment")[-1]
    assert event["image_digest"] == released["image"]["digest"]
    assert event["model_version"] == "v2" and event["target"] == "docker"


def test_a_broken_image_leaves_v2_serving_and_the_run_red(released, pipeline_env, docker_client, registry) -> None:
    # Same lineage labels as v2 (it is built FROM it) but the app cannot find its model: never ready.
    image = released["image"]
    base = f"{image['repository']}@{image['digest']}"
    docker_client.api.login(registry.username, registry.password, registry=registry.address)
    docker_client.images.pull(base)
    dockerfile = f"FROM {base}\nENV MODEL_DIR=/nonexistent\n".encode()
    broken, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{image['repository']}:broken",
                                           network_mode="host")  # fmt: skip
    for line in docker_client.images.push(image["repository"], tag="broken", stream=True, decode=True):
        assert "error" not in line, line
    events_before = len(asset_events("deployment"))

    run = run_dag("release", {"target": "docker", "image": f"{image['repository']}:broken"})
    states = task_states(run)
    assert str(run.state) == "failed" and states["deploy"] == "failed", states
    now = serving_version(pipeline_env["MODELSHIP_DOCKER_DEPLOY_PORT"])
    assert now["model"]["version"] == "v2" and now["commit"] == released["commit"]
    assert len(asset_events("deployment")) == events_before
    status = modelship_status()
    assert status["model_version"] == "v2" and status["image_digest"] == image["digest"], status
