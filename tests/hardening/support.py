"""Helpers shared by the hardening tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import requests

from devstack import components, process
from devstack.stack import AIRFLOW_COMPONENTS, airflow_passwords, airflow_settings
from modelship import airflow_api, net
from modelship.airflow_api import AirflowAPI
from modelship.registry import RegistryClient


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


# --- images to push -----------------------------------------------------------------------------------------------


def unique_image(docker_client, tmp_path: Path, megabytes: int = 4) -> str:
    """A small image with a layer of random bytes (never in the registry yet: it must really be sent)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = b"FROM scratch\nCOPY payload /payload\n"  # one layer, and only ours
        for name, data in (("Dockerfile", dockerfile), ("payload", os.urandom(megabytes << 20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, network_mode="host", rm=True)
    return image.id


def image_is_whole(registry: components.Registry, repository: str, tag: str, digest: str) -> None:
    """The tag names `digest`, and the manifest's config and every layer are in the registry."""
    client = RegistryClient(registry.address, registry.username, registry.password)
    try:
        assert client.digest(repository, tag) == digest
        manifest = client._request("GET", f"/v2/{repository}/manifests/{digest}", repository).json()
    finally:
        client.close()
    auth = (registry.username, registry.password)
    for blob in [manifest["config"], *manifest["layers"]]:
        url = f"http://{registry.address}/v2/{repository}/blobs/{blob['digest']}"
        assert requests.head(url, auth=auth, timeout=10).status_code == 200, blob


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


class AirflowStack:
    """What `make up` runs of Airflow (devstack.stack.AIRFLOW_COMPONENTS, without the triggerer: no commit
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
            **airflow_settings(self.home, self.port),  # as `make up` runs them, but for these:
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
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
        airflow_passwords(self.home / airflow_api.PASSWORDS_FILE)  # as `make up`: 0600, before the api-server
        for proc in self.procs:
            name = proc.name.removeprefix("airflow-")
            if name != "triggerer":
                proc.spawn([airflow, *self.args[name]], env=self.env, cwd=self.home)
        api = self.procs[-1]
        net.wait_for(lambda: airflow_api.healthy(self.base), f"Airflow API server on {self.base}", timeout=timeout,
                     log=api.log_file)  # fmt: skip
        with self.client() as client:
            client.wait_for_dags(dag_ids, timeout=timeout)
            for dag_id in dag_ids:
                client.unpause(dag_id)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def client(self) -> AirflowAPI:
        """Airflow's REST API as the admin user, with the password the simple auth manager generated."""
        password = airflow_api.password_from_file(self.home / airflow_api.PASSWORDS_FILE, "admin")
        return AirflowAPI.login(self.base, "admin", password)

    def task_logs(self) -> dict[Path, bytes]:
        return {path: path.read_bytes() for path in (self.home / "logs").rglob("*") if path.is_file()}


def subprocess_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
