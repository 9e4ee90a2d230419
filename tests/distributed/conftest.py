"""The distributed stack for real: docker-compose.airflow.yml with Postgres, Redis and two Celery workers.

Opt-in (MODELSHIP_DISTRIBUTED=1): a session starts ~10 containers in a private Docker engine and runs the
whole flow through them, which takes minutes and most of this machine's 2 cores. `.ci/run` turns it on.
The stack is `modelship.distributed.Distributed` — what `make up-distributed` runs — in a private state
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
import requests

from devstack import compose as distributed

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("MODELSHIP_DISTRIBUTED") == "1"
SKIP_REASON = (
    "SKIPPED: the distributed (CeleryExecutor) stack tests are opt-in — set MODELSHIP_DISTRIBUTED=1 to start "
    "Postgres, Redis, Airflow and two Celery workers in containers and run the flow through them (minutes)"
)
TERMINAL = {"success", "failed"}


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


class AirflowAPI:
    """Airflow 3's REST API as a user drives it: token from /auth/token, then /api/v2."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.trust_env = False  # never through a proxy: the stack is on loopback
        token = self.session.post(f"{base}/auth/token", json={"username": username, "password": password}, timeout=30)
        token.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        """GET, riding out a short outage as any client must: while Postgres restarts the API server answers
        500 (or a connection fails) until its pool reconnects. Bounded: 90 s, then the error stands."""
        deadline = time.monotonic() + 90
        while True:
            try:
                response = self.session.get(f"{self.base}/api/v2{path}", params=params, timeout=30)
                if response.status_code < 500:
                    response.raise_for_status()
                    return response.json()
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                response.raise_for_status()
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        unpause = self.session.patch(f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=30)
        unpause.raise_for_status()
        response = self.session.post(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="start_date", limit=100)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll until the run ends; returns it (state success or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} did not finish in {timeout:.0f}s: {self.states(dag_id, run_id)}")

    def wait_for_new_run(self, dag_id: str, known: set[str], timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id):
                if run["dag_run_id"] not in known:
                    return run["dag_run_id"]
            time.sleep(2)
        raise AssertionError(f"no new {dag_id} run within {timeout:.0f}s")

    def image_events(self, run_id: str) -> list[dict[str, Any]]:
        events = self.get("/assets/events", source_dag_id="ci", source_run_id=run_id)["asset_events"]
        return [e["extra"] for e in events if e["name"] == "image"]  # (Airflow stores the uri as modelship://image/)


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
def api(stack: distributed.Distributed) -> AirflowAPI:
    return AirflowAPI(f"http://127.0.0.1:{stack.ports.api}", distributed.ADMIN_USER, stack.secrets()["ADMIN_PASSWORD"])


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
        if runs and all(r["state"] in TERMINAL for r in runs):
            return
        time.sleep(2)
    raise AssertionError(f"the watcher's first ci run did not appear and end within 180s: {api.runs('ci')}")


@pytest.fixture(scope="session")
def flow(api: AirflowAPI, host_env: dict[str, str], trained: dict[str, Path], quiet_start: None) -> dict[str, Any]:
    """The whole flow through the REST API: publish v1 → model_refresh promotes it → ci (started by the
    `model` Asset) builds and pushes → release deploys on the docker target. Returns the runs."""
    from modelship.model_store import open_store

    open_store().publish(trained["v1"])
    ci_before = {r["dag_run_id"] for r in api.runs("ci")}
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
