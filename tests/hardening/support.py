"""Helpers shared by the hardening tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from devstack import process
from devstack.stack import AIRFLOW_COMPONENTS
from modelship import net


def try_numbers(dag_run) -> dict[str, int]:
    """task id → how many times it was tried in this run (1: no retry)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in dag_run.get_task_instances(session=session)}


# --- source commits the ci DAG can build quickly ---------------------------------------------------------------


def quick_commits(clone: Path, count: int = 1) -> list[str]:
    """A throwaway clone of this repository with `count` new commits; the first keeps only the app's quick
    packaging tests, each next one edits the README. A ci run still checks out, tests, builds and
    smoke-tests such a commit for real, only minutes sooner. Returns the commits, oldest first."""
    from tests.e2e.pipeline import REPO, git

    git("clone", "-q", "--no-hardlinks", str(REPO), str(clone))
    who = ("-c", "user.name=test", "-c", "user.email=test@localhost")
    tests = (clone / "tests" / "app").glob("test_*.py")
    git("rm", "-q", *[str(p.relative_to(clone)) for p in tests if p.name != "test_packaging.py"], cwd=clone)
    git(*who, "commit", "-qm", "quick tests only", cwd=clone)
    commits = [git("rev-parse", "HEAD", cwd=clone)]
    for number in range(1, count):
        (clone / "README.md").write_text((clone / "README.md").read_text() + f"\ncommit {number}\n")
        git(*who, "commit", "-qam", f"commit {number}", cwd=clone)
        commits.append(git("rev-parse", "HEAD", cwd=clone))
    return commits


# --- scanning for credentials ------------------------------------------------------------------------------


def leaks(chunks: Iterable[bytes], secrets: dict[str, bytes]) -> set[str]:
    """Names of the secrets found anywhere in a stream of bytes (also across chunk boundaries)."""
    found: set[str] = set()
    overlap = max(len(s) for s in secrets.values())
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        found |= {name for name, secret in secrets.items() if secret in window}
        tail = window[-overlap:]
    return found


def image_leaks(docker_client, image_id: str, secrets: dict[str, bytes]) -> dict[str, set[str]]:
    """Where each secret shows: the image's history, its config (inspect), its layers (`docker save`)."""
    api = docker_client.api
    history = json.dumps(api.history(image_id)).encode()
    config = json.dumps(api.inspect_image(image_id)).encode()
    return {
        "history": leaks([history], secrets),
        "config": leaks([config], secrets),
        "layers": leaks(api.get_image(image_id, chunk_size=1 << 20), secrets),
    }


# --- a real Airflow deployment: scheduler, dag-processor and api-server on a free loopback port ---------


SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
TERMINAL = {"success", "failed"}


class AirflowStack:
    """What `make up` runs of Airflow (modelship.stack.AIRFLOW_COMPONENTS, without the triggerer: no commit
    watcher starting runs behind the test's back), in a private AIRFLOW_HOME on a free port, with the
    caller's environment (connections and settings) for the tasks. LocalExecutor on SQLite, as `make up`."""

    def __init__(self, root: Path, dags: list[Path], env: dict[str, str]) -> None:
        self.home = root / "airflow"
        self.dags = root / "dags"
        self.port = net.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dags.mkdir(parents=True, exist_ok=True)
        for dag in dags:
            (self.dags / dag.name).symlink_to(dag)
        venv_bin = Path(sys.executable).parent
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MODELSHIP_"))}
        self.env = {
            **inherited,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # components start `airflow` subprocesses
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(__file__).resolve().parents[2] / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the runs a test triggers
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            **env,
        }
        self.procs = [process.Process(f"airflow-{name}", self.home) for name, _ in AIRFLOW_COMPONENTS]
        self.args = dict(AIRFLOW_COMPONENTS)

    def start(self, dag_ids: list[str], timeout: float = 300) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        self.home.mkdir(parents=True, exist_ok=True)
        migrate = subprocess_run([airflow, "db", "migrate"], self.env)
        assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-3000:]
        for proc in self.procs:
            name = proc.name.removeprefix("airflow-")
            if name != "triggerer":
                proc.spawn([airflow, *self.args[name]], env=self.env, cwd=self.home)
        api = self.procs[-1]
        net.wait_for(self.healthy, f"Airflow API server on {self.base}", timeout=timeout, log=api.log_file)
        client = self.client()
        deadline = time.monotonic() + timeout
        while not all(client.session.get(f"{self.base}/api/v2/dags/{d}", timeout=10).ok for d in dag_ids):
            assert time.monotonic() < deadline, f"DAGs {dag_ids} not parsed within {timeout}s"
            time.sleep(1)
        for dag_id in dag_ids:
            client.unpause(dag_id)

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.base}/api/v2/monitor/health", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def password(self, user: str = "admin") -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())[user]

    def client(self) -> AirflowClient:
        return AirflowClient(self.base, "admin", self.password())

    def task_logs(self) -> dict[Path, bytes]:
        return {path: path.read_bytes() for path in (self.home / "logs").rglob("*") if path.is_file()}


def subprocess_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


class AirflowClient:
    """Airflow 3's REST API as a user drives it: a token from POST /auth/token, then /api/v2."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never through a proxy
        token = self.session.post(f"{base}/auth/token", json={"username": username, "password": password}, timeout=30)
        token.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.base}/api/v2{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def unpause(self, dag_id: str) -> None:
        response = self.session.patch(f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=30)
        response.raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = self.session.post(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def wait(self, runs: list[tuple[str, str]], timeout: float = 900) -> dict[tuple[str, str], str]:
        """Poll until every (dag_id, run_id) has ended; their final states."""
        deadline = time.monotonic() + timeout
        while True:
            states = {(d, r): self.get(f"/dags/{d}/dagRuns/{r}")["state"] for d, r in runs}
            if all(state in TERMINAL for state in states.values()):
                return states
            assert time.monotonic() < deadline, {k: (v, self.states(*k)) for k, v in states.items()}
            time.sleep(3)

    def asset_events(self, dag_id: str, run_id: str, asset: str) -> list[dict[str, Any]]:
        """Extras of the events of Asset `asset` (by name) that this run emitted."""
        events = self.get("/assets/events", source_dag_id=dag_id, source_run_id=run_id)["asset_events"]
        return [e["extra"] for e in events if e.get("name") == asset]
