"""`make up-distributed` / `make down-distributed`: Airflow on Postgres, Redis and two Celery workers.

    python -m devstack distributed up       # engine, images, then docker-compose.airflow.yml
    python -m devstack distributed down     # removes every container and stops what `up` started
    python -m devstack distributed status
    python -m devstack distributed images   # only build/load the images (devstack.images)

The compose stack runs in its own Docker engine (``devstack.stack.Stack``'s, on other ports), with its
registry and Azurite as compose services beside Airflow, its state under ``.state/distributed/``: it
coexists with `make up`, and `down` stops exactly what `up` started.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import REPO_ROOT, StackError
from devstack.images import CACHE, IMAGES, ensure_image
from devstack.stack import Stack
from modelpkg.atomic import write_atomic
from modelship.fs import link_tree
from modelship.net import NotReady, free_port, wait_for

if TYPE_CHECKING:
    import docker

COMPOSE_FILE = REPO_ROOT / "docker-compose.airflow.yml"
PROJECT = "modelship-distributed"
ADMIN_USER = "admin"  # AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS in the compose file
WORKERS = ("airflow-worker-1", "airflow-worker-2")
# The workers' MODELSHIP_CACHE (wheelhouse, the app's test venvs, model cache): only saves time, and every
# writer renames into place atomically, so all stacks on the machine (and test sessions) share it.
WORKER_CACHE = CACHE / "worker-cache"
AIRFLOW_UID = 50000  # the images' user (compose: AIRFLOW_UID)


@dataclass(frozen=True)
class Ports:
    """Every port the stack listens on, all on 127.0.0.1; defaults stay clear of `make up` (8080, 5000,
    10000, 8000) and of a system Postgres/Redis (5432, 6379)."""

    api: int = 8081
    postgres: int = 5433
    redis: int = 6380
    registry: int = 5001
    azurite: int = 10010
    deploy: int = 8001  # where the release DAG's docker target serves the app

    @classmethod
    def free(cls) -> Ports:
        """Free ports for every component: a test session's private stack."""
        return cls(**{f.name: free_port() for f in fields(cls)})


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class Distributed:
    """The compose stack and the host components it needs, under one state folder."""

    state: Path
    ports: Ports = field(default_factory=Ports)
    source_dir: Path = REPO_ROOT  # the git repository the ci DAG builds (mounted read-only)
    project: str = PROJECT
    overrides: tuple[Path, ...] = ()  # more compose files over docker-compose.airflow.yml (a benchmark's variant)

    def __post_init__(self) -> None:
        # The single-host stack's Docker engine and connection settings (registry credentials, Azurite's
        # connection string), on this stack's own ports and state folder. Registry and Azurite themselves run
        # as compose services.
        self.stack: Stack = Stack(self.state, registry_port=self.ports.registry, azurite_port=self.ports.azurite)
        self.htpasswd = self.state / "registry-auth" / "htpasswd"
        self.compose_env = self.state / "compose.env"
        self.airflow_env = self.state / "airflow.env"
        self.auth_dir = self.state / "auth"
        self.wheelhouse = self.state / "wheelhouse"

    # -------------------------------------------------------------------------- files

    def secrets(self) -> dict[str, str]:
        """Random secrets, made once per state folder and kept there (0600): never a default secret."""
        path = self.state / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "REDIS_PASSWORD": secrets.token_hex(16),
            "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
            "ADMIN_PASSWORD": secrets.token_urlsafe(12),
        }
        write_atomic(path, json.dumps(values, indent=1) + "\n", mode=0o600)
        return values

    def compose_variables(self) -> dict[str, str]:
        """The compose file's ${VARIABLES}: images, ports, secrets and host paths."""
        values = self.secrets()
        socket = self.stack.docker.socket
        return {
            "COMPOSE_PROJECT_NAME": self.project,
            "DOCKER_HOST": self.stack.docker.url,
            **{spec.env: os.environ.get(spec.env, spec.name) for spec in IMAGES},
            "AIRFLOW_API_PORT": str(self.ports.api),
            "POSTGRES_PORT": str(self.ports.postgres),
            "REDIS_PORT": str(self.ports.redis),
            "REGISTRY_PORT": str(self.ports.registry),
            "AZURITE_PORT": str(self.ports.azurite),
            "REGISTRY_HTPASSWD": str(self.htpasswd),
            **{k: v for k, v in values.items() if k != "ADMIN_PASSWORD"},
            "DOCKER_SOCKET": str(socket),
            "DOCKER_GID": str(socket.stat().st_gid if socket.exists() else 0),
            "MODELSHIP_ENV_FILE": str(self.airflow_env),
            "MODELSHIP_SOURCE_DIR": str(self.source_dir),
            "AIRFLOW_AUTH_DIR": str(self.auth_dir),
            "MODELSHIP_WHEELHOUSE": str(self.wheelhouse),
            "MODELSHIP_CACHE_DIR": str(WORKER_CACHE),
        }

    def airflow_environment(self) -> dict[str, str]:
        """airflow.env: the same connections and MODELSHIP_* settings `make up` uses, for this stack's
        registry and Azurite. Paths tied to the compose file's mounts (state, cache, Docker socket) are set there."""
        layout = {"MODELSHIP_STATE", "MODELSHIP_DOCKER_HOST", "MODELSHIP_CACHE"}
        env = {
            k: v
            for k, v in self.stack.environment().items()
            if k.startswith(("AIRFLOW_CONN_", "MODELSHIP_")) and k not in layout
        }
        env["MODELSHIP_DOCKER_DEPLOY_PORT"] = str(self.ports.deploy)
        env["MODELSHIP_SOURCE_REPO"] = "/opt/modelship/source"  # source_dir, mounted read-only
        # Containers here cannot reach a package index (the host's TLS trust is not theirs): the ci DAG's
        # app-test venv and image wheelhouse install from the host-made wheelhouse mounted read-only.
        env["PIP_NO_INDEX"] = "1"
        env["PIP_FIND_LINKS"] = "/opt/modelship/wheelhouse"
        return env

    def host_environment(self) -> dict[str, str]:
        """For the modelship CLI on the host (`source .state/distributed/modelship.env`): same store, registry."""
        env = self.stack.environment()
        keep = {k: v for k, v in env.items() if k.startswith(("AIRFLOW_CONN_", "MODELSHIP_"))}
        return {
            **keep,
            "MODELSHIP_DOCKER_DEPLOY_PORT": str(self.ports.deploy),
            "DOCKER_HOST": env["DOCKER_HOST"],
            # For `make demo` (modelship.demo) against this stack instead of `make up`'s.
            "MODELSHIP_AIRFLOW_URL": f"http://127.0.0.1:{self.ports.api}",
            "MODELSHIP_AIRFLOW_PASSWORD_FILE": str(self.auth_dir / "passwords.json"),
        }

    def write_files(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        write_atomic(self.compose_env, _dotenv(self.compose_variables()), mode=0o600)
        write_atomic(self.airflow_env, _dotenv(self.airflow_environment()), mode=0o600)
        self.stack.write_env_file(self.host_environment())
        # A bcrypt hash the registry's unprivileged user reads in its container (0644); the folder, 0700 before
        # the file is written, keeps it from the host's other users (the engine, as root, resolves the mount).
        self.htpasswd.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.htpasswd.parent.chmod(0o700)
        self.stack.registry.write_htpasswd(self.htpasswd).chmod(0o644)
        # The simple auth manager reads (and would otherwise generate) this file; group 0 (the containers'
        # group) may write it, since the api-server opens it for appending.
        self.auth_dir.mkdir(parents=True, exist_ok=True)
        passwords = self.auth_dir / "passwords.json"
        write_atomic(passwords, json.dumps({ADMIN_USER: self.secrets()["ADMIN_PASSWORD"]}) + "\n", mode=0o660)
        self.auth_dir.chmod(0o770)
        os.chown(self.auth_dir, -1, 0)
        os.chown(passwords, -1, 0)
        if not WORKER_CACHE.exists():
            WORKER_CACHE.mkdir(parents=True)
            os.chown(WORKER_CACHE, AIRFLOW_UID, 0)  # the containers (uid 50000 or AIRFLOW_UID, group 0) write here
            WORKER_CACHE.chmod(0o2775)

    def prepare_wheelhouse(self) -> None:
        """One folder with the app's serving and test wheels, for the workers' offline pip."""
        from devstack import CACHE_DIR
        from modelship.images import wheelhouse

        for requirements in ("app/requirements.txt", "app/requirements-test.txt"):
            link_tree(wheelhouse(REPO_ROOT / requirements, CACHE_DIR), self.wheelhouse)

    # -------------------------------------------------------------------------- compose

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        ensure_compose()
        files = [arg for path in (COMPOSE_FILE, *self.overrides) for arg in ("-f", str(path))]
        argv = ["docker-compose", *files, "-p", self.project, "--env-file", str(self.compose_env), *args]
        env = {**os.environ, "DOCKER_HOST": self.stack.docker.url}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
        if check and done.returncode != 0:
            raise StackError(f"docker-compose {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def client(self) -> docker.DockerClient:
        import docker as docker_sdk

        return docker_sdk.DockerClient(base_url=self.stack.docker.url, timeout=600)

    def container(self, service: str) -> Any:
        """The running container of a compose service (docker-py), by compose's labels."""
        found = self.client().containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}",
                               f"com.docker.compose.service={service}"]},
        )  # fmt: skip
        if not found:
            raise StackError(f"no container for service {service}")
        return found[0]

    # -------------------------------------------------------------------------- up / down

    def ensure_images(self) -> None:
        client = self.client()
        try:
            for spec in IMAGES:
                if os.environ.get(spec.env, spec.name) != spec.name:
                    continue  # the user named another image (e.g. an official one): not ours to build
                started = time.monotonic()
                how = ensure_image(client, spec)
                print(f"  {spec.name}: {how} ({time.monotonic() - started:.0f}s)", flush=True)
        finally:
            client.close()

    def up(self, timeout: float = 420) -> None:
        print("starting Docker engine (no bridge, host network)…", flush=True)
        self.stack.docker.start()
        print("images (built once, then loaded from ~/.cache/modelship/distributed)…", flush=True)
        self.stack.docker.ensure_base_image()  # what the ci DAG builds the app on
        self.ensure_images()
        self.write_files()
        self.prepare_wheelhouse()
        print(f"starting the compose stack (postgres, redis, registry on {self.stack.registry.address}, Azurite on "
              f"127.0.0.1:{self.ports.azurite}, init, api-server, scheduler, dag-processor, triggerer, "
              "2 workers)…", flush=True)  # fmt: skip
        # `up -d` waits for the depends_on conditions (healthy database and broker, init completed).
        self.compose("up", "-d", "--remove-orphans")
        self.wait_ready(timeout)
        self._print_login()

    def wait_ready(self, timeout: float = 420) -> None:
        """The API says the metadatabase, scheduler, triggerer and dag-processor are healthy, and both
        Celery workers have said ready."""
        url = f"http://127.0.0.1:{self.ports.api}/api/v2/monitor/health"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    health = json.load(response)
            except (OSError, ValueError):
                return False
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if any((health.get(p) or {}).get("status") != "healthy" for p in parts):
                return False
            return all(b"ready." in self.container(w).logs(tail=200) for w in WORKERS)

        try:
            wait_for(ready, "the distributed Airflow stack", timeout=timeout)
        except NotReady as exc:
            raise StackError(f"{exc}\n{self.compose('ps', check=False).stdout}") from exc

    def _print_login(self) -> None:
        print(f"\nthe distributed stack is up.\n  Airflow UI: http://127.0.0.1:{self.ports.api}")
        print(f"  login:      {ADMIN_USER} / {self.secrets()['ADMIN_PASSWORD']}   (from {self.state}/secrets.json)")
        print(f"  CLI:        source {self.stack.env_file} && .venv/bin/modelship --help")
        print(f"  compose:    DOCKER_HOST={self.stack.docker.url} docker-compose -f {COMPOSE_FILE.name} "
              f"--env-file {self.compose_env} ps")  # fmt: skip
        print("  stop:       make down-distributed", flush=True)

    def down(self, volumes: bool = False) -> None:
        """Remove the stack's containers (and with `volumes`, its data), then stop its Docker engine."""
        if self.stack.docker.ping() and self.compose_env.exists():
            print("removing the compose stack's containers…", flush=True)
            self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), timeout=300)
            # The release DAG's docker target started the app in this engine, outside compose.
            client = self.client()
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.close()
        print("stopping Docker engine…", flush=True)
        self.stack.docker.stop()

    def running(self) -> bool:
        """The compose stack's API answers (what `make demo` checks to pick this stack over `make up`'s)."""
        if not self.compose_env.exists():
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.api}/api/v2/monitor/health", timeout=5):
                return True
        except OSError:
            return False

    def status(self) -> str:
        if not (self.stack.docker.ping() and self.compose_env.exists()):
            return "stopped (no Docker engine for the distributed stack)"
        return self.compose("ps", check=False).stdout


def ensure_compose() -> str:
    """docker-compose 1.29 (Debian's package), installed on first use like `make up` installs its tools."""
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.geteuid() != 0:
        raise StackError("docker-compose is not installed: apt-get install docker-compose")
    print("installing docker-compose (apt)…", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker-compose"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return shutil.which("docker-compose") or "docker-compose"


def _dotenv(values: dict[str, str]) -> str:
    """KEY=value lines as docker-compose 1.29 reads them (env_file and --env-file): no quoting, one line each."""
    for key, value in values.items():
        if "\n" in value:
            raise ValueError(f"{key}: an env file value cannot span lines")
    return "# Written by `make up-distributed`; rewritten on every up.\n" + "".join(
        f"{k}={v}\n" for k, v in sorted(values.items())
    )
