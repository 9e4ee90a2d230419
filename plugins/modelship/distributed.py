"""`make up-distributed` / `make down-distributed`: Airflow on Postgres, Redis and two Celery workers.

    python -m modelship.distributed up       # engine, images, then docker-compose.airflow.yml
    python -m modelship.distributed down     # removes every container and stops what `up` started
    python -m modelship.distributed status
    python -m modelship.distributed images   # only build/load the images

The compose stack runs in its own Docker engine (``modelship.stack.Stack``'s, on other ports), with
its registry and Azurite as compose services beside Airflow, its state under ``.state/distributed/``: it
coexists with `make up`, and `down` stops exactly what `up` started. Nothing can be pulled here, so the five
images are built from dockerfiles/ on local debootstrapped root filesystems, and saved as tarballs in
~/.cache/modelship so a new engine (a test session, a fresh state folder) loads them in seconds instead of
rebuilding.

Inside the containers this module only provides ``check-connections`` (the init step's sanity check).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelship import localstack
from modelship.settings import REPO_ROOT

if TYPE_CHECKING:
    import docker

    from modelship.stack import Stack

log = logging.getLogger(__name__)

COMPOSE_FILE = REPO_ROOT / "docker-compose.airflow.yml"
# Not "docker/": a top-level folder of that name makes ruff sort `import docker` (docker-py) as first-party.
DOCKER_DIR = REPO_ROOT / "dockerfiles"
PROJECT = "modelship-distributed"
ADMIN_USER = "admin"  # AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS in the compose file
WORKERS = ("airflow-worker-1", "airflow-worker-2")
CACHE = localstack.CACHE_DIR / "distributed"
# Image names: the compose file's defaults (a test checks they agree); override with the same variables.
AIRFLOW_IMAGE = "modelship/airflow:3.3.2"
POSTGRES_IMAGE = "modelship/postgres:15"
REDIS_IMAGE = "modelship/redis:7"
REGISTRY_IMAGE = "modelship/registry:2"
AZURITE_IMAGE = f"modelship/azurite:{localstack.AZURITE_VERSION}"
BUILD_KEY_LABEL = "io.modelship.build-key"
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
        return cls(**{f.name: localstack.free_port() for f in fields(cls)})


# ---------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Rootfs:
    """A debootstrapped Debian (minbase) with `packages`, imported as `image`: how images get a base here."""

    name: str
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        return hashlib.sha256(" ".join(("bookworm", "minbase", *self.packages)).encode()).hexdigest()[:16]

    @property
    def image(self) -> str:
        return f"local/modelship-{self.name}:{self.key}"

    def tarball(self) -> Path:
        """Build once per machine (≈ 30 s), cached; same recipe as localstack.build_base_rootfs."""
        out = CACHE / "rootfs" / f"{self.name}-{self.key}.tar"
        if out.exists():
            return out
        if not shutil.which("mmdebstrap"):
            raise localstack.StackError("mmdebstrap is not installed: run `make up` (apt: mmdebstrap)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        print(f"  debootstrapping {self.name} ({', '.join(self.packages)})…", flush=True)
        done = subprocess.run(
            ["mmdebstrap", "--format=tar", "--variant=minbase", f"--include={','.join(self.packages)}",
             "bookworm", str(tmp)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise localstack.StackError(f"mmdebstrap {self.name} failed:\n{done.stderr[-2000:]}")
        tmp.rename(out)
        return out


# git: the ci DAG checks out commits and its watcher polls the branch. Baked into the base rather than
# bind-mounted from the host: a host binary needs the host's libraries, and the image must work on AKS.
AIRFLOW_ROOTFS = Rootfs("airflow-base", ("python3", "python3-venv", "ca-certificates", "git"))
# One root filesystem for both data services: one mmdebstrap run, layers shared on disk.
DATA_ROOTFS = Rootfs("data-base", ("postgresql-15", "redis-server"))
# The same for the Azure stand-ins (wget: the registry's healthcheck).
STANDINS_ROOTFS = Rootfs("standins-base", ("docker-registry", "wget", "nodejs"))


@dataclass(frozen=True)
class ContextExtra:
    """Inputs made on the host and added to a build context: nothing can be fetched inside `docker build` here."""

    describe: Callable[[], bytes]  # what the image's cache key hashes (cheap: no download)
    add: Callable[[Path], None]  # put them into the context folder


@functools.cache  # asked by every image key and build; the host's tools do not change under a running process
def host_kubectl() -> Path | None:
    """The host's kubectl if it can render the overlays (kustomize v4+, kubectl >= 1.21), else None."""
    found = shutil.which("kubectl")
    if not found:
        return None
    try:
        done = subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
        kustomize = json.loads(done.stdout).get("kustomizeVersion", "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not kustomize.startswith(("v4", "v5")):
        return None
    return Path(found).resolve()


def _describe_airflow_inputs() -> bytes:
    kubectl = host_kubectl()
    tool = hashlib.sha256(kubectl.read_bytes()).hexdigest() if kubectl else "no kubectl"
    return (REPO_ROOT / "requirements.txt").read_bytes() + f"\nkubectl {tool}\n".encode()


def _add_airflow_inputs(context: Path) -> None:
    from modelship import images

    requirements = REPO_ROOT / "requirements.txt"
    shutil.copy2(requirements, context / "requirements.txt")
    for reqs in (requirements, context / "requirements-bookworm.txt"):
        _link_tree(images.wheelhouse(reqs, localstack.CACHE_DIR), context / "wheels")
    (context / "bin").mkdir()
    kubectl = host_kubectl()
    if kubectl:
        shutil.copy2(kubectl, context / "bin" / "kubectl")
    else:
        print("  no kubectl with kustomize v4+ on this host: the image's release DAG can deploy to the docker "
              "target only", flush=True)  # fmt: skip


def _add_azurite(context: Path) -> None:
    # node_modules/.bin/azurite-blob → node_modules; its .bin entries are symlinks, kept as such.
    node_modules = localstack.Azurite.install().parents[1]
    shutil.copytree(node_modules, context / "node_modules", symlinks=True, copy_function=_link_or_copy)


# The Airflow image: requirements.txt and its wheelhouse (pip cannot reach an index inside `docker build`), and
# kubectl for the kubernetes target (nothing can be downloaded here: the host's, when it has a suitable one).
AIRFLOW_INPUTS = ContextExtra(_describe_airflow_inputs, _add_airflow_inputs)
# Azurite: the npm package the host installs for `make up`, pinned by version.
AZURITE_PACKAGE = ContextExtra(lambda: f"azurite@{localstack.AZURITE_VERSION}".encode(), _add_azurite)


@dataclass(frozen=True)
class ImageSpec:
    """An image built from dockerfiles/<folder>/ on a local root filesystem, cached as a tarball by content."""

    env: str  # the compose variable that names it; set to another image, it is not built here
    name: str  # the default tag compose runs
    folder: str  # dockerfiles/<folder>
    rootfs: Rootfs
    extra: ContextExtra | None = None

    def key(self) -> str:
        digest = hashlib.sha256(f"{self.name}\n{self.rootfs.key}\n".encode())
        for path in sorted((DOCKER_DIR / self.folder).rglob("*")):
            if path.is_file():
                digest.update(f"{path.relative_to(DOCKER_DIR)}:{path.stat().st_mode & 0o111}\n".encode())
                digest.update(path.read_bytes())
        if self.extra:
            digest.update(self.extra.describe())
        return digest.hexdigest()[:16]

    def tarball(self) -> Path:
        safe = self.name.replace("/", "_").replace(":", "_")
        return CACHE / "images" / f"{safe}-{self.key()}.tar"


IMAGES = (
    ImageSpec("AIRFLOW_IMAGE", AIRFLOW_IMAGE, "airflow", AIRFLOW_ROOTFS, AIRFLOW_INPUTS),
    ImageSpec("POSTGRES_IMAGE", POSTGRES_IMAGE, "postgres", DATA_ROOTFS),
    ImageSpec("REDIS_IMAGE", REDIS_IMAGE, "redis", DATA_ROOTFS),
    ImageSpec("REGISTRY_IMAGE", REGISTRY_IMAGE, "registry", STANDINS_ROOTFS),
    ImageSpec("AZURITE_IMAGE", AZURITE_IMAGE, "azurite", STANDINS_ROOTFS, AZURITE_PACKAGE),
)


def ensure_image(client: docker.DockerClient, spec: ImageSpec) -> str:
    """`spec.name` in the engine, current: already there, else loaded from the cache, else built (and cached)."""
    import docker as docker_sdk

    key = spec.key()
    try:
        if client.images.get(spec.name).labels.get(BUILD_KEY_LABEL) == key:
            return "present"
    except docker_sdk.errors.ImageNotFound:
        pass
    tarball = spec.tarball()
    if tarball.exists():
        with open(tarball, "rb") as data:
            client.images.load(data)
        if client.images.get(spec.name).labels.get(BUILD_KEY_LABEL) == key:
            return "loaded"
    _build(client, spec, key)
    _save(client, spec, tarball)
    return "built"


def _build(client: docker.DockerClient, spec: ImageSpec, key: str) -> None:
    from modelship import images

    base = _import_rootfs(client, spec.rootfs)
    # Beside the cache, not in /tmp: hard links into the build context need one filesystem.
    (CACHE / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="context-", dir=CACHE / "build") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(DOCKER_DIR / spec.folder, context)
        if spec.extra:
            spec.extra.add(context)
        print(f"  building {spec.name} from dockerfiles/{spec.folder} on {base}…", flush=True)
        images.build_image(client, context, spec.name, {"BASE_IMAGE": base}, labels={BUILD_KEY_LABEL: key})


def _import_rootfs(client: docker.DockerClient, rootfs: Rootfs) -> str:
    import docker as docker_sdk

    try:
        client.images.get(rootfs.image)
    except docker_sdk.errors.ImageNotFound:
        repository, tag = rootfs.image.split(":")
        client.api.import_image_from_file(str(rootfs.tarball()), repository=repository, tag=tag)
    return rootfs.image


def _save(client: docker.DockerClient, spec: ImageSpec, tarball: Path) -> None:
    """Keep the image as a tarball (written atomically); older tarballs of the same image go."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for chunk in client.images.get(spec.name).save(named=True):
            out.write(chunk)
    tmp.rename(tarball)
    for old in tarball.parent.glob(f"{tarball.name.rsplit('-', 1)[0]}-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)


def _link_tree(src: Path, dest: Path) -> None:
    """The files of `src` (a wheelhouse: hundreds of MB) into `dest`, linked where possible."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not (dest / path.name).exists():
            _link_or_copy(path, dest / path.name)


def _link_or_copy(src: str | Path, dest: str | Path) -> None:
    """A hard link, or a copy across filesystems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class Distributed:
    """The compose stack and the host components it needs, under one state folder."""

    state: Path
    ports: Ports = field(default_factory=Ports)
    source_dir: Path = REPO_ROOT  # the git repository the ci DAG builds (mounted read-only)
    project: str = PROJECT

    def __post_init__(self) -> None:
        from modelship.stack import Stack

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
        _write_private(path, json.dumps(values, indent=1) + "\n")
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
        _write_private(self.compose_env, _dotenv(self.compose_variables()))
        _write_private(self.airflow_env, _dotenv(self.airflow_environment()))
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
        _write_private(passwords, json.dumps({ADMIN_USER: self.secrets()["ADMIN_PASSWORD"]}) + "\n", mode=0o660)
        self.auth_dir.chmod(0o770)
        os.chown(self.auth_dir, -1, 0)
        os.chown(passwords, -1, 0)
        if not WORKER_CACHE.exists():
            WORKER_CACHE.mkdir(parents=True)
            os.chown(WORKER_CACHE, AIRFLOW_UID, 0)  # the containers (uid 50000 or AIRFLOW_UID, group 0) write here
            WORKER_CACHE.chmod(0o2775)

    def prepare_wheelhouse(self) -> None:
        """One folder with the app's serving and test wheels, for the workers' offline pip."""
        from modelship import images

        for requirements in ("app/requirements.txt", "app/requirements-test.txt"):
            _link_tree(images.wheelhouse(REPO_ROOT / requirements, localstack.CACHE_DIR), self.wheelhouse)

    # -------------------------------------------------------------------------- compose

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        ensure_compose()
        argv = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, "--env-file", str(self.compose_env),
                *args]  # fmt: skip
        env = {**os.environ, "DOCKER_HOST": self.stack.docker.url}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
        if check and done.returncode != 0:
            raise localstack.StackError(f"docker-compose {' '.join(args)} failed:\n{done.stderr[-3000:]}")
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
            raise localstack.StackError(f"no container for service {service}")
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
            localstack.wait_for(ready, "the distributed Airflow stack", timeout=timeout)
        except localstack.StackError as exc:
            raise localstack.StackError(f"{exc}\n{self.compose('ps', check=False).stdout}") from exc

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
        raise localstack.StackError("docker-compose is not installed: apt-get install docker-compose")
    print("installing docker-compose (apt)…", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker-compose"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise localstack.StackError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return shutil.which("docker-compose") or "docker-compose"


def _dotenv(values: dict[str, str]) -> str:
    """KEY=value lines as docker-compose 1.29 reads them (env_file and --env-file): no quoting, one line each."""
    for key, value in values.items():
        if "\n" in value:
            raise ValueError(f"{key}: an env file value cannot span lines")
    return "# Written by `make up-distributed`; rewritten on every up.\n" + "".join(
        f"{k}={v}\n" for k, v in sorted(values.items())
    )


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.touch(mode=mode)
    tmp.chmod(mode)
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- in-container


def check_connections() -> int:
    """The init step's check: the connections the DAGs use resolve (from AIRFLOW_CONN_*), secrets unprinted."""
    from airflow.models.connection import Connection

    from modelship.settings import Settings

    settings = Settings.get()
    for conn_id in (settings.wasb_conn_id, settings.registry_conn_id):
        conn = Connection.get_connection_from_secrets(conn_id)
        print(f"connection {conn_id}: type {conn.conn_type}, host {conn.host or '(in extra)'}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "running", "images", "check-connections"])
    default_state = os.environ.get("MODELSHIP_DISTRIBUTED_STATE", str(REPO_ROOT / ".state" / "distributed"))
    parser.add_argument("--state", type=Path, default=Path(default_state))
    parser.add_argument("--volumes", action="store_true", help="down: also delete the named volumes (all data)")
    args = parser.parse_args(argv)
    if args.command == "check-connections":
        return check_connections()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    stack = Distributed(args.state.resolve())
    try:
        if args.command == "up":
            stack.up()
        elif args.command == "down":
            stack.down(volumes=args.volumes)
        elif args.command == "running":  # exit status only
            return 0 if stack.running() else 1
        elif args.command == "images":
            stack.stack.docker.start()
            stack.ensure_images()
        else:
            print(stack.status())
    except localstack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
