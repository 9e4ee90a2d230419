"""Failures the distributed stack must survive: a Celery worker dying mid-task, Postgres restarting mid-run."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import pytest
import requests
from airflow_client.client.models.task_instance_response import TaskInstanceResponse

from devstack import compose as distributed
from modelship.airflow_api import FINISHED, AirflowAPI
from tests.distributed.conftest import git, image_events

pytestmark = pytest.mark.needs_stack

SERVICE_OF_HOST = {"worker-1": "airflow-worker-1", "worker-2": "airflow-worker-2"}


def wait_running(
    api: AirflowAPI, dag_id: str, run_id: str, tasks: tuple[str, ...], timeout: float = 300
) -> TaskInstanceResponse:
    """The first of `tasks` seen running (with the worker that runs it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in api.tasks(dag_id, run_id):
            if ti.task_id in tasks and ti.state == "running" and ti.hostname:
                return ti
        if api.run(dag_id, run_id).state in FINISHED:
            break
        time.sleep(1)
    raise AssertionError(f"none of {tasks} was seen running: {api.task_states(dag_id, run_id)}")


def crash(stack: distributed.Distributed, service: str) -> None:
    """SIGKILL the container's PID 1 from the host: a crash, not a `docker stop` (no graceful shutdown, and
    the restart policy applies, as after an OOM kill or a node failure)."""
    pid = stack.container(service).attrs["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)


def registry_image_intact(stack: distributed.Distributed, repository: str, digest: str) -> None:
    """The manifest the registry serves for `digest` hashes to it, and its config and every layer exist."""
    registry = stack.stack.registry
    session = requests.Session()
    session.trust_env = False
    session.auth = (registry.username, registry.password)
    base = f"http://{registry.address}/v2/{repository}"
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    response = session.get(f"{base}/manifests/{digest}", headers={"Accept": accept}, timeout=30)
    assert response.status_code == 200, response.text
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    manifest = response.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        head = session.head(f"{base}/blobs/{blob['digest']}", timeout=30)
        assert head.status_code == 200, (blob, head.status_code)
        assert int(head.headers["Content-Length"]) == blob["size"], blob


def test_a_worker_killed_mid_task_loses_no_task_and_the_pushed_image_is_intact(
    stack: distributed.Distributed, api: AirflowAPI, flow: dict[str, Any], host_env: dict[str, str],
    trained: dict, source_repo,
) -> None:  # fmt: skip
    from modelship.model_store import open_store

    # A new model version makes a new image (the same commit + v1 is already pushed and would be skipped).
    store = open_store()
    store.publish(trained["v2"])
    store.promote("digits", "v2", "production")
    commit = git("rev-parse", "HEAD", cwd=source_repo)
    run_id = api.trigger("ci", {"commit": commit})

    victim = wait_running(api, "ci", run_id, ("build", "test", "fetch_model", "smoke_test"))
    dead_host = victim.hostname
    crash(stack, SERVICE_OF_HOST[dead_host])
    started = time.monotonic()

    run = api.wait("ci", run_id, timeout=600)
    tis = {ti.task_id: ti for ti in api.tasks("ci", run_id)}
    states = api.task_states("ci", run_id)
    assert run.state == "success", states
    # Every step green; `announce` is the branch a run takes only when the image is already pushed.
    assert states == {**dict.fromkeys(states, "success"), "announce": "skipped"}, states
    retried = tis[victim.task_id]
    # The killed try was failed by the scheduler (no heartbeat) and the task ran again, to success.
    assert retried.try_number >= 2, retried
    print(f"{victim.task_id} killed on {dead_host}; run green {time.monotonic() - started:.0f}s later; "
          f"retry ran on {retried.hostname}")  # fmt: skip

    # Exactly one image event, for v2, and the registry holds exactly that image, whole.
    events = image_events(api, run_id)
    assert len(events) == 1, events
    event = events[0]
    assert event["model_version"] == "v2" and event["commit"] == commit
    repository = event["repository"].split("/", 1)[1]
    from modelship.registry import RegistryClient

    client = RegistryClient(stack.stack.registry.address, stack.stack.registry.username, stack.stack.registry.password)
    try:
        assert client.digest(repository, event["tag"]) == event["digest"]
    finally:
        client.close()
    registry_image_intact(stack, repository, event["digest"])

    # The crashed worker comes back by itself (restart policy) and rejoins the queue.
    container = stack.container(SERVICE_OF_HOST[dead_host])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (container.status == "running" and b"ready." in container.logs(tail=50)):
        time.sleep(2)
        container.reload()
    assert container.status == "running", container.status


def test_a_postgres_restart_mid_run_is_survived_and_the_run_completes(
    stack: distributed.Distributed, api: AirflowAPI, flow: dict[str, Any], source_repo
) -> None:
    # A run long enough to restart Postgres under (a release of what already serves ends in seconds): ci of a
    # commit of its own, on a side branch the commits watcher does not follow, so only this run builds it.
    tree = git("rev-parse", "HEAD^{tree}", cwd=source_repo)
    who = ("-c", "user.name=test", "-c", "user.email=test@localhost")
    commit = git(*who, "commit-tree", tree, "-p", "HEAD", "-m", "postgres restart test", cwd=source_repo)
    git("branch", "postgres-restart", commit, cwd=source_repo)
    run_id = api.trigger("ci", {"commit": commit})
    wait_running(api, "ci", run_id, ("test", "fetch_model", "build"))
    postgres = stack.container("postgres")
    scheduler_restarts = stack.container("airflow-scheduler").attrs["RestartCount"]
    postgres.restart(timeout=30)  # fast shutdown (SIGINT), then a new server on the same volume
    run = api.wait("ci", run_id, timeout=600)
    assert run.state == "success", api.task_states("ci", run_id)
    events = image_events(api, run_id)
    assert [e["commit"] for e in events] == [commit], events
    restarts = stack.container("airflow-scheduler").attrs["RestartCount"] - scheduler_restarts
    print(f"ci run green across a Postgres restart; scheduler container restarts: {restarts}")
    # And the stack still schedules new work afterwards (the image the flow deployed stays the one serving).
    image = image_events(api, flow["ci"].dag_run_id)[0]
    again = api.trigger("release", {"target": "docker", "image": f"{image['repository']}@{image['digest']}"})
    assert api.wait("release", again, timeout=300).state == "success", api.task_states("release", again)
