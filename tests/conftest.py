"""The test harness: real components on loopback, started once per session and always stopped.

Each fixture starts the same component `make up` starts (devstack.components), on a free port and in a
private state folder, so tests never touch a developer's running stack. A component that cannot run here
makes its tests fail loudly rather than skip quietly: in CI everything the suite needs is installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import components
from modelship import net

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def azurite(stack_dir: Path) -> Iterator[components.Azurite]:
    """Real Azurite; tests may stop() and start() it again (its data survives)."""
    server = components.Azurite(stack_dir / "azurite", port=net.free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry(stack_dir: Path) -> Iterator[components.Registry]:
    """Real Distribution registry with htpasswd auth (random password)."""
    server = components.Registry(stack_dir / "registry", port=net.free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def docker_engine(stack_dir: Path) -> Iterator[components.DockerEngine]:
    """A private dockerd (no bridge, host network only) with the local base image imported."""
    engine = components.DockerEngine(stack_dir / "docker")
    engine.start()
    try:
        engine.ensure_base_image()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def docker_client(docker_engine: components.DockerEngine):
    import docker

    client = docker.DockerClient(base_url=docker_engine.url, timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite, in the session's AIRFLOW_HOME) for dag.test()."""
    import subprocess
    import sys

    home = Path(os.environ["AIRFLOW_HOME"])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], capture_output=True, text=True, env=os.environ
    )
    if done.returncode != 0:
        pytest.fail(f"airflow db migrate failed in {home}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return home


@pytest.fixture(scope="session")
def airflow_rest(airflow_db: Path, stack_dir: Path) -> Iterator[dict[str, str]]:
    """Airflow's api-server on the session's DB (127.0.0.1, a free port), for what reads Airflow's metadata
    through its REST API (modelship history, status, image …). Yields the MODELSHIP_AIRFLOW_* variables."""
    import sys

    from devstack.process import Process

    port = net.free_port()
    home = Path(os.environ["AIRFLOW_HOME"])
    proc = Process("api-server", stack_dir / "api-server")
    venv_bin = Path(sys.executable).parent
    proc.spawn(
        [str(venv_bin / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={"PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"},
    )
    try:
        net.wait_for(lambda: net.port_open(port), "Airflow api-server", timeout=180, log=proc.log_file)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        net.wait_for(passwords.exists, "the simple auth manager's password file", timeout=60, log=proc.log_file)
        yield {
            "MODELSHIP_AIRFLOW_URL": f"http://127.0.0.1:{port}",
            "MODELSHIP_AIRFLOW_USER": "admin",
            "MODELSHIP_AIRFLOW_PASSWORD_FILE": str(passwords),
        }
    finally:
        proc.stop()


def pytest_configure(config: pytest.Config) -> None:
    # Airflow reads its configuration at import: point it at a private home before any test imports it.
    # A fresh home per session (SQLite), never a developer's ~/airflow or the `make up` stack's.
    if "MODELSHIP_TEST_AIRFLOW_HOME" not in os.environ:
        os.environ["MODELSHIP_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="modelship-airflow-")
    os.environ["AIRFLOW_HOME"] = os.environ["MODELSHIP_TEST_AIRFLOW_HOME"]
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
