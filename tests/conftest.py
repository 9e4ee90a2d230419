"""The test harness: real components on loopback, started once per session and always stopped.

Each fixture starts the same component `make up` starts (devstack.components), on a free port and in a
private state folder, so tests never touch a developer's running stack. A component that cannot run here
makes its tests fail loudly rather than skip quietly: in CI everything the suite needs is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def api_server(state_dir: Path, name: str = "api-server") -> Iterator[dict[str, str]]:
    """Airflow's api-server on the session's DB (127.0.0.1, a free port), with the test process's environment
    as it is now (its settings and connections, and this repository's plugins: the Deployments page). Yields
    the MODELSHIP_AIRFLOW_* variables that reach it as admin."""
    import sys

    from devstack.process import Process
    from devstack.stack import airflow_passwords

    port = net.free_port()
    home = Path(os.environ["AIRFLOW_HOME"])
    airflow_passwords(home / "simple_auth_manager_passwords.json.generated")  # as `make up`: 0600, beforehand
    proc = Process(name, state_dir / name)
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


@pytest.fixture(scope="session")
def start_api_server(airflow_db: Path, stack_dir: Path):
    """`with start_api_server("name") as rest:` another api-server on the session's DB, started with the
    environment the test has set by then (its own settings: a target port, a model store, a source)."""
    return lambda name: api_server(stack_dir, name)


@pytest.fixture(scope="session")
def airflow_rest(airflow_db: Path, stack_dir: Path) -> Iterator[dict[str, str]]:
    """Airflow's api-server on the session's DB, for what reads Airflow's metadata through its REST API
    (modelship history, status, image …). Yields the MODELSHIP_AIRFLOW_* variables."""
    with api_server(stack_dir) as env:
        yield env


class Inbox:
    """What a real SMTP server (aiosmtpd) on 127.0.0.1 received: one email.message.Message per mail."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Any] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        import email

        self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def connection(self) -> str:
        """AIRFLOW_CONN_<ID> for it: plain SMTP (no TLS, no login) on loopback, the sender in the extra."""
        extra = {"from_email": "modelship@localhost", "disable_ssl": True, "disable_tls": True, "retry_limit": 1,
                 "timeout": 10}  # fmt: skip
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port, "extra": extra})


@pytest.fixture
def smtp_inbox() -> Iterator[Inbox]:
    from aiosmtpd.controller import Controller

    inbox = Inbox(net.free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


class Webhook:
    """A chat's incoming webhook on 127.0.0.1: the JSON bodies POSTed to it, with their paths."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.port = net.free_port()

    def connection(self, path: str = "services/T000/B000/secret", fmt: str | None = None) -> str:
        """An http connection to it, the webhook's secret path in the password (as for Slack)."""
        extra = {"format": fmt} if fmt else {}
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http",
                           "password": path, "extra": extra})  # fmt: skip


@pytest.fixture
def chat_webhook() -> Iterator[Webhook]:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.received.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", hook.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def _hypothesis_profiles() -> None:
    """Property-based tests draw the same examples on every run (CI runs them on every commit: a red build must
    be the commit's, not a new random draw's), and replay nothing from a local example database. Each test's
    own @settings inherit this; HYPOTHESIS_PROFILE=explore draws new examples, for a run meant to search."""
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    _hypothesis_profiles()
    # Airflow reads its configuration at import: point it at a private home before any test imports it.
    # A fresh home per session (SQLite), never a developer's ~/airflow or the `make up` stack's.
    if "MODELSHIP_TEST_AIRFLOW_HOME" not in os.environ:
        os.environ["MODELSHIP_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="modelship-airflow-")
    os.environ["AIRFLOW_HOME"] = os.environ["MODELSHIP_TEST_AIRFLOW_HOME"]
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
