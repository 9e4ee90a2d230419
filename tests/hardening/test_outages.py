"""Faults the harness can really cause: the registry and the Docker engine stopped while their step runs.

What exists elsewhere and is not repeated: the blob store going away during a fetch (retried, then a clear
StoreUnavailable, nothing at dest: tests/plugins/test_model_store.py), an unreachable registry for
RegistryClient and push_image (tests/plugins/test_registry.py), bad releases rolled back on the docker
target (tests/plugins/test_deploy_docker.py), red ci runs that push nothing (tests/e2e/test_ci_dag.py).

Added here: the ci DAG's push step with the registry stopped (both retry layers, a red run, nothing in the
registry once it is back); the registry and the engine each stopped in the middle of a push, after a MiB of a
layer went through a proxy (tests/faultproxy.py) that watches the upload, then started again: the push ends
green and every blob of the image it announces is in the registry; the engine stopped in the middle of a build
(no image left under the tag) and while a release deploys (a retryable error, the old version serving again
once the engine is back, and the retried release then going through). The registry and the engine are session
fixtures shared with other tests: every test here brings them back in `finally`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import docker
import pytest

import devstack
from devstack import components, process, rootfs
from modelship import images, net
from modelship.registry import RegistryClient
from tests.e2e.pipeline import REPO, task_states
from tests.faultproxy import FaultProxy, Watch
from tests.hardening.support import image_is_whole, quick_commits, try_numbers, unique_image
from tests.logcapture import log_messages
from tests.plugins.deploy_fixtures import build_standin

REPOSITORY = "modelship/digits-app"


def restart_engine(engine: components.DockerEngine, client: docker.DockerClient) -> None:
    engine.start()
    # Pooled connections to the old socket are dead: the first calls may fail until the pool renews them.
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --- registry down during the ci DAG's push ----------------------------------------------------------


@pytest.fixture
def quick_source(tmp_path: Path) -> tuple[Path, str]:
    """(clone, commit): a commit of this repository the ci run checks out, tests (the quick tests only),
    builds and smoke-tests for real; the push step is what is under test."""
    [commit] = quick_commits(tmp_path / "src")
    return tmp_path / "src", commit


@pytest.mark.docker
@pytest.mark.registry
def test_ci_push_with_the_registry_down_retries_then_fails_and_pushes_nothing(
    dag_env, registry_conn, registry: components.Registry, docker_engine: components.DockerEngine,
    quick_source, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from airflow.dag_processing.dagbag import DagBag

    from modelship import ci as ci_steps

    clone, commit = quick_source
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(clone))
    monkeypatch.setenv("MODELSHIP_CACHE", str(devstack.CACHE_DIR))  # wheelhouse and test venv, as in e2e
    monkeypatch.setenv("MODELSHIP_BASE_IMAGE", rootfs.BASE_IMAGE)
    monkeypatch.setenv("MODELSHIP_DOCKER_HOST", docker_engine.url)

    real_push = ci_steps.push

    def push_with_the_registry_down(candidate: dict) -> dict:
        registry.stop()  # everything before push talked to the registry; now it is gone
        return real_push(candidate)

    monkeypatch.setattr(ci_steps, "push", push_with_the_registry_down)
    bag = DagBag(dag_folder=str(REPO / "dags" / "ci.py"), safe_mode=False)
    dag = bag.get_dag("ci")
    # One Airflow retry after a second instead of three after 10-40 s: the same mechanism, sooner.
    dag.task_dict["push"].retries = 1
    dag.task_dict["push"].retry_delay = timedelta(seconds=1)
    try:
        with log_messages("modelship.images", logging.WARNING) as retries:
            run = dag.test(run_conf={"commit": commit})
    finally:
        registry.start()
    states = task_states(run)
    output = capfd.readouterr()
    logs = output.out + output.err
    assert str(run.state) == "failed", states
    assert states["smoke_test"] == "success" and states["push"] == "failed", states
    tag = f"{commit[:12]}-v1"
    # Inside each of the task's two tries: push_image's own retries with exponential backoff ...
    backoff = [m.rsplit("; ", 1)[1] for m in retries if f"{tag} failed" in m]
    assert backoff == ["retry 1/3 in 2.0s", "retry 2/3 in 4.0s", "retry 3/3 in 8.0s"] * 2, retries
    assert all(f"registry {registry.address} unreachable" in m for m in retries), retries
    # ... and Airflow's retry of the task on top: a second try, failing the same way.
    assert try_numbers(run)["push"] == 2
    assert logs.count(f"push of {registry.address}/{REPOSITORY}:{tag} failed after 4 attempts") >= 2
    assert "refused the credentials" not in logs  # an unreachable registry is not a credentials problem
    client = RegistryClient(registry.address, registry.username, registry.password)
    try:
        assert client.digest(REPOSITORY, tag) is None  # nothing half-pushed became a tag
        assert tag not in client.tags(REPOSITORY)
    finally:
        client.close()
    assert not list((Path(dag_env).parent / "state" / "work" / "ci").glob("*"))  # the teardown cleaned up


# --- the registry or the engine stopped mid-push, then back -----------------------------------------------------


@pytest.mark.docker
@pytest.mark.registry
def test_registry_stopped_mid_push_then_back_the_push_ends_green_and_the_image_is_whole(
    registry_proxy: FaultProxy, registry: components.Registry, docker_client, tmp_path: Path
) -> None:
    outage: list[str] = []

    def registry_goes_away() -> None:
        registry.stop()  # a MiB of the layer is up: the upload dies with the registry
        outage.append("stopped")
        registry.start()

    up = Watch(match="PATCH /v2/.*/blobs/uploads/", after=1 << 20, then=registry_goes_away)
    registry_proxy.arm(up)
    image = unique_image(docker_client, tmp_path, megabytes=8)
    try:
        with log_messages("modelship.images") as messages:
            pushed = images.push_image(docker_client, image, "modelship-outages/mid-push", "t",
                                       registry_conn="modelship_registry")  # fmt: skip
    finally:
        registry.start()
    assert up.fired == 1 and outage == ["stopped"]
    assert any("Retrying in" in m for m in messages), messages  # the cut upload was sent again
    image_is_whole(registry, "modelship-outages/mid-push", "t", pushed.digest)


@pytest.mark.docker
@pytest.mark.registry
def test_engine_stopped_mid_push_then_back_the_push_retries_and_ends_green(
    registry_proxy: FaultProxy, registry: components.Registry, docker_engine: components.DockerEngine,
    docker_client, tmp_path: Path,
) -> None:  # fmt: skip
    restarted: list[str] = []

    def engine_goes_away() -> None:
        # The engine dies (SIGKILL: a graceful stop would first finish the push it is in); the push stream breaks
        # under push_image. Then it is started again, as its supervisor would.
        pid = docker_engine.proc.pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        while process.alive(pid):
            time.sleep(0.05)
        docker_engine.stop()  # what a killed dockerd leaves behind: its containerd, its mounts
        docker_engine.start()
        restarted.append("engine")

    up = Watch(match="PATCH /v2/.*/blobs/uploads/", after=1 << 20, then=engine_goes_away)
    registry_proxy.arm(up)
    image = unique_image(docker_client, tmp_path, megabytes=8)
    try:
        with log_messages("modelship.images", logging.WARNING) as retries:
            # Six attempts, 2 s to 32 s apart (62 s): a budget far beyond an engine restart of a few seconds.
            pushed = images.push_image(docker_client, image, "modelship-outages/engine-mid-push", "t",
                                       registry_conn="modelship_registry", attempts=6)  # fmt: skip
    finally:
        restart_engine(docker_engine, docker_client)
    assert up.fired == 1 and restarted == ["engine"]
    assert retries and "retry 1/5 in 2.0s" in retries[0], retries
    assert f"Docker engine {docker_engine.url}" in retries[0], retries  # named as the engine's outage
    image_is_whole(registry, "modelship-outages/engine-mid-push", "t", pushed.digest)


# --- Docker engine stopped during a build ---------------------------------------------------------------

# A build step that runs long enough to lose the engine under it.
SLOW_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG PAUSE=0
RUN sh -c 'trap "exit 143" TERM; echo building; sleep "$PAUSE" & wait'
"""


@pytest.mark.docker
def test_engine_stopped_mid_build_is_a_retryable_error_and_leaves_no_image(
    docker_engine: components.DockerEngine, docker_client, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(SLOW_DOCKERFILE)
    tag = "modelship-hardening/engine-gone:latest"
    outcome: dict[str, BaseException] = {}

    def build() -> None:
        try:
            images.build_image(docker_client.api, context, tag, {"BASE_IMAGE": rootfs.BASE_IMAGE, "PAUSE": "120"})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            outcome["error"] = exc

    def build_step_running() -> bool:
        # The RUN step's container: new, and of the base image or one built on it (`ancestor` matches both,
        # so containers other suites left on the engine are excluded by id).
        return any(c.id not in before for c in docker_client.containers.list(filters={"ancestor": rootfs.BASE_IMAGE}))

    before = {c.id for c in docker_client.containers.list(all=True)}
    worker = threading.Thread(target=build)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not build_step_running():
            assert time.monotonic() < deadline and worker.is_alive(), outcome
            time.sleep(0.2)
        docker_engine.stop()
        worker.join(60)
    finally:
        restart_engine(docker_engine, docker_client)
    assert not worker.is_alive()
    # The engine killed the RUN step while stopping: not a failed step (ImageBuildError, the verdict the ci
    # DAG fails at once on) but an outage, left to the task's retries with exponential backoff.
    error = outcome.get("error")
    assert isinstance(error, images.EngineUnavailable), repr(error)
    assert not isinstance(error, images.ImageBuildError)
    assert f"Docker engine {docker_engine.url} stopped answering during the build of {tag} at Step 4/4" in str(error)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
    # The engine is back: the retried build goes through.
    built = images.build_image(docker_client.api, context, tag, {"BASE_IMAGE": rootfs.BASE_IMAGE, "PAUSE": "0"})
    assert docker_client.images.get(tag).id == built.id
    docker_client.images.remove(tag, force=True)


# --- Docker engine stopped while the app's tests run -------------------------------------------------------


@pytest.mark.docker
def test_engine_stopped_while_the_app_tests_run_is_a_retryable_error(
    docker_engine: components.DockerEngine, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelship import apptests
    from modelship.retry import is_transient
    from tests.containment import make_checkout

    for key, value in {"MODELSHIP_DOCKER_HOST": docker_engine.url, "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
                       "MODELSHIP_STATE": str(tmp_path / "state")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    checkout = make_checkout(tmp_path / "src", {"test_long.py": "import time\ndef test_long():\n    time.sleep(300)\n"})
    cache = tmp_path / "cache"
    apptests.environment(checkout, cache)  # built before: the outage is to hit the tests, not the build
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            apptests.run(checkout, cache)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not docker_client.containers.list(filters={"label": apptests.RUN_LABEL, "status": "running"}):
            assert time.monotonic() < deadline and worker.is_alive(), outcome
            time.sleep(0.2)
        time.sleep(2)  # pytest is in the test
        docker_engine.stop()
        worker.join(120)
    finally:
        restart_engine(docker_engine, docker_client)
    assert not worker.is_alive()
    # The engine killed the test container while stopping: not red tests (AppTestsFailed, the verdict the ci
    # DAG fails at once on) but an outage, left to the task's retries.
    error = outcome.get("error")
    assert isinstance(error, apptests.EngineUnavailable | apptests.TestEnvironmentUnavailable), repr(error)
    assert not isinstance(error, apptests.AppTestsFailed) and is_transient(error)
    # The engine is back: the retried run goes through. (The killed run's container and image stay until their
    # expiry, when the next run sweeps them; here they go now, for the tests after this one.)
    try:
        checkout = make_checkout(tmp_path / "again", {"test_quick.py": "def test_quick():\n    pass\n"})
        assert apptests.run(checkout, cache).startswith("1 passed")
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": apptests.RUN_LABEL}):
            container.remove(force=True)
        for image in docker_client.images.list(filters={"label": apptests.RUN_LABEL}):
            docker_client.images.remove(image.id, force=True)


# --- Docker engine stopped during a release ---------------------------------------------------------------


def serving_commit(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as response:
        return json.load(response)["commit"]


def wait_serving(port: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return serving_commit(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.docker
def test_engine_down_during_a_release_fails_retryably_and_the_old_version_comes_back(
    docker_engine: components.DockerEngine, docker_client, capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow.sdk.exceptions import AirflowException

    from modelship.deploy import DeploymentFailed
    from modelship.deploy.docker import DockerTarget

    port = net.free_port()
    v1 = build_standin(docker_client, "modelship-hardening/standin:v1", "hardening-v1")
    v2 = build_standin(docker_client, "modelship-hardening/standin:v2", "hardening-v2")
    try:
        DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=20).deploy(v1.tag, v1.lineage())
        assert serving_commit(port) == v1.commit
        docker_engine.stop()
        try:
            with pytest.raises(AirflowException) as failed:
                DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=20).deploy(v2.tag, v2.lineage())
        finally:
            restart_engine(docker_engine, docker_client)
        # Not DeploymentFailed (the verdict the release DAG does not retry): an outage, retried with backoff.
        assert not isinstance(failed.value, DeploymentFailed)
        output = capfd.readouterr()  # the Docker provider's hook names the engine in the task log
        assert f"Failed to establish connection to Docker host {docker_engine.url}" in output.out + output.err
        # The engine restarts the serving container (restart policy): v1 serves again, untouched by v2.
        assert wait_serving(port) == v1.commit
        # The retry, now that the engine is back, goes through and is verified.
        event = DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=20).deploy(v2.tag, v2.lineage())
        assert event.commit == v2.commit and serving_commit(port) == v2.commit
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
            container.remove(force=True)
