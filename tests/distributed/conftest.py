"""The distributed stack for real: docker-compose.airflow.yml with Postgres, Redis and two Celery workers.

Opt-in (MODELSHIP_DISTRIBUTED=1): a session starts ~10 containers in a private Docker engine and runs the
whole flow through them, which takes minutes and most of this machine's 2 cores. `.ci/run` turns it on.
The stack is `devstack.compose.Distributed` — what `make up-distributed` runs — in a private state
folder on free ports, so it never touches a developer's `make up` or `make up-distributed`.

MODELSHIP_DISTRIBUTED_SOURCE=<git repo> builds another repository's main branch instead of this one's
(to tell a stack problem from a red commit); MODELSHIP_DISTRIBUTED_KEEP=1 leaves the stack running.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import compose as distributed
from modelship.airflow_api import FINISHED, AirflowAPI

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("MODELSHIP_DISTRIBUTED") == "1"
DAG_IDS = ("ci", "release", "model_refresh")
SKIP_REASON = (
    "SKIPPED: the distributed (CeleryExecutor) stack tests are opt-in — set MODELSHIP_DISTRIBUTED=1 to start "
    "Postgres, Redis, Airflow and two Celery workers in containers and run the flow through them (minutes)"
)
# While Postgres restarts (test_faults) the API server answers 500 until its pool reconnects: every read
# rides that out, as any client must, for up to this long; then the error stands.
OUTAGE_PATIENCE = 90


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "needs_stack" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_stack: starts the distributed compose stack (MODELSHIP_DISTRIBUTED=1)")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def image_events(api: AirflowAPI, ci_run_id: str) -> list[dict[str, Any]]:
    """The extras of the `image` events a ci run emitted."""
    return [event.extra for event in api.asset_events("image", run=("ci", ci_run_id))]


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway clone: its branch head does not move while the session runs (others commit to this repo),
    so the ci DAG's commit watcher fires once, at start-up, and never in the middle of a test."""
    clone = tmp_path_factory.mktemp("source") / "repo"
    origin = os.environ.get("MODELSHIP_DISTRIBUTED_SOURCE") or str(REPO)
    git("clone", "-q", "--no-hardlinks", "--branch", "main", origin, str(clone), cwd=REPO)
    return clone


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[distributed.Distributed]:
    state = tmp_path_factory.mktemp("distributed")
    dist = distributed.Distributed(state, distributed.Ports.free(), source_dir=source_repo, project="modelship-test")
    started = time.monotonic()
    try:
        dist.up()
        print(f"distributed stack up in {time.monotonic() - started:.0f}s", flush=True)
        yield dist
    finally:
        if os.environ.get("MODELSHIP_DISTRIBUTED_KEEP") != "1":  # keep it to debug a failure by hand
            dist.down(volumes=True)


@pytest.fixture(scope="session")
def api(stack: distributed.Distributed) -> Iterator[AirflowAPI]:
    url, password = f"http://127.0.0.1:{stack.ports.api}", stack.secrets()["ADMIN_PASSWORD"]
    with AirflowAPI.login(url, distributed.ADMIN_USER, password, patience=OUTAGE_PATIENCE) as client:
        client.wait_for_dags(DAG_IDS)
        for dag_id in DAG_IDS:  # the compose file leaves new DAGs unpaused; this says so rather than relies on it
            client.unpause(dag_id)
        yield client


@pytest.fixture(scope="session")
def host_env(stack: distributed.Distributed) -> Iterator[dict[str, str]]:
    """The host side (a data scientist's CLI) pointed at the stack's Azurite and registry."""
    env = stack.host_environment()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("MODELSHIP_CACHE", str(stack.state / "host-cache"))
        yield env


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.train import train_package

    root = tmp_path_factory.mktemp("trained")
    for version in ("v1", "v2"):
        train_package(root / version, version=version)
    return {v: root / v for v in ("v1", "v2")}


@pytest.fixture(scope="session")
def quiet_start(api: AirflowAPI) -> None:
    """The commit watcher starts one ci run for the branch head as soon as the triggerer is up; with no
    model promoted yet it fails at once. Wait for it to end, so no test races it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = api.runs("ci")
        if runs and all(r.state in FINISHED for r in runs):
            return
        time.sleep(2)
    raise AssertionError(f"the watcher's first ci run did not appear and end within 180s: {api.runs('ci')}")


@pytest.fixture(scope="session")
def flow(api: AirflowAPI, host_env: dict[str, str], trained: dict[str, Path], quiet_start: None) -> dict[str, Any]:
    """The whole flow through the REST API: publish v1 → model_refresh promotes it → ci (started by the
    `model` Asset) builds and pushes → release deploys on the docker target. Returns the runs."""
    from modelship.model_store import open_store

    open_store().publish(trained["v1"])
    ci_before = {r.dag_run_id for r in api.runs("ci")}
    refresh = api.trigger("model_refresh", {"version": "v1"})
    refresh_run = api.wait("model_refresh", refresh, timeout=300)
    ci = api.wait_for_new_run("ci", ci_before)
    ci_run = api.wait("ci", ci, timeout=600)
    release = api.trigger("release", {"target": "docker"})
    release_run = api.wait("release", release, timeout=300)
    return {
        "model_refresh": refresh_run,
        "ci": ci_run,
        "release": release_run,
        "runs": [("model_refresh", refresh), ("ci", ci), ("release", release)],
    }
