"""`make up` / `make down`: the whole product on embedded defaults, on one machine, loopback only.

    python -m devstack up       # Docker engine, registry, Azurite, base image, Airflow's components
    python -m devstack down     # stops exactly what `up` started (by pid file / process group)
    python -m devstack status

Everything lives under one git-ignored folder (``.state/`` by default, MODELSHIP_STATE): pid files,
logs, data, the Airflow home and ``modelship.env``, the environment (connections and settings) that
Airflow runs with and that users ``source`` to use the ``modelship`` CLI against the same stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack import CACHE_DIR, REPO_ROOT, StackError
from devstack.cluster import LocalCluster
from devstack.components import Azurite, DockerEngine, Registry, airflow_connections
from devstack.process import Process
from devstack.rootfs import BASE_IMAGE
from modelpkg.atomic import write_atomic
from modelship.net import wait_for

AIRFLOW_PORT = 8080
REGISTRY_PORT = 5000
AZURITE_PORT = 10000
MODEL_CONTAINER = "models"
CLUSTER_LEASE = "make-up"  # `make up K8S=1` holds the local cluster until `make down`
AIRFLOW_COMPONENTS = (
    ("scheduler", ["scheduler", "--skip-serve-logs"]),
    ("dag-processor", ["dag-processor"]),
    ("triggerer", ["triggerer", "--skip-serve-logs"]),
    ("api-server", ["api-server"]),
)


def airflow_project(home: Path) -> dict[str, str]:
    """An Airflow home that loads this repository's dags/ and plugins/ and no examples."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


# Airflow's own cost per task (issue 19; bench/bench_orchestration.py measures each against Airflow's default):
# the scheduler sleeps this long after a loop that found nothing to do (default 1 s), and a finished task's
# successor waits for its next loop. On an empty eight-task DAG (3 runs each, quiet machine): 7.2 s outside the
# task bodies on the defaults, 1.1 s at 0.25 s (6.9 % of a core idle, on SQLite the database's work too), 1.6 s at
# 0.1 s (15 %). Task processes forked from a forkserver preloading modelship.preload measured worse (8.7 s with
# the default sleep, 4.3 s with 0.1 s), so the LocalExecutor keeps Airflow's default start method.
# The task supervisor learns that its task process ended from the process's sockets closing; when the last one
# closes an instant before the process can be reaped, it finds no socket left to wait on and sleeps up to
# min_heartbeat_interval (default 5 s) before it looks again. On 2 cores most runs of the release DAG hit it once
# (its two teardowns end together): release runs on the local stack took 7.4 s (median of 6, 5 of them with a
# 5.3 s stall) and 3.9 s at 1 s (no stall over 1.4 s); bench_orchestration's probe, 2.38 -> 2.05 s outside the task
# bodies. The cost: a running task heartbeats every second instead of every 5 (≈ 13 ms of the api-server's time
# each, ≈ 1.3 % of a core per running task; the probe's CPU per run, 4.97 -> 5.3 s, is within its spread).
SCHEDULING = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25", "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1"}


def airflow_settings(home: Path, port: int) -> dict[str, str]:
    """Airflow's components as modelship runs them on one host: this repository's dags/ and plugins/,
    LocalExecutor, the simple auth manager, the API on 127.0.0.1:`port`. (The benchmarks run the same.)"""
    base = f"http://127.0.0.1:{port}"
    return {
        **airflow_project(home),
        # SQLite lets one writer in at a time; the others wait for the lock up to this many seconds (5 by default)
        # and then fail the request with "database is locked". On a first `make demo`, with the scheduler catching
        # up on its first runs, a REST trigger failed so (HTTP 500) after 5 s.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home.resolve() / 'airflow.db'}?timeout=30",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        # 32 workers by default would take 5.5 GB here; 4 is plenty for three DAGs.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        # Without this every task fails with "Connection refused" (it defaults to localhost:8080 on all
        # interfaces' resolution, which may pick ::1).
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        **SCHEDULING,
    }


def airflow_passwords(path: Path, users: tuple[str, ...] = ("admin",)) -> Path:
    """The simple auth manager's password file, written before the api-server starts: owner-only (0600) from the
    moment it exists (write_atomic), a random password for each user. Left to the api-server, it is created with
    the process's umask (world-readable as a rule) and the generated password is printed to its log. The
    api-server keeps a file that names every user. Passwords already there are kept; the mode is made 0600."""
    try:
        known = json.loads(path.read_text() or "{}") if path.exists() else {}
    except ValueError:
        known = {}  # unreadable: the api-server would refuse it too; start over
    missing = [user for user in users if user not in known]
    if missing or not path.exists():
        known.update({user: secrets.token_urlsafe(18) for user in missing})
        write_atomic(path, json.dumps(known) + "\n", mode=0o600)
    else:
        path.chmod(0o600)  # a file from before: tightened
    return path


def connections(registry: Registry, azurite: Azurite) -> dict[str, str]:
    """The connections the DAGs use (model store, registry), as AIRFLOW_CONN_* for these local stand-ins."""
    return airflow_connections({"modelship_blob": azurite.connection, "modelship_registry": registry.connection})


def kubernetes_environment(cluster: LocalCluster) -> dict[str, str]:
    """The release DAG's kubernetes target on the local cluster: its connection (the kubeconfig's content, as
    on AKS) and the `local` overlay; the nightly release deploys there."""
    return {
        **airflow_connections({"modelship_kubernetes": cluster.connection}),
        "MODELSHIP_KUBE_OVERLAY": "local",
        "MODELSHIP_DEPLOY_TARGET": "kubernetes",
    }


class Stack:
    def __init__(self, state: Path, *, registry_port: int = REGISTRY_PORT, azurite_port: int = AZURITE_PORT) -> None:
        # Ports are arguments so another stack (devstack.compose) can run beside this one.
        self.state = state
        self.docker = DockerEngine(state / "docker")
        self.registry = Registry(state / "registry", port=registry_port)
        self.azurite = Azurite(state / "azurite", port=azurite_port)
        # What `airflow standalone` runs, started one by one so each binds loopback only: standalone
        # gives no way to stop the scheduler's and triggerer's log servers listening on all interfaces.
        self.airflow = [Process(f"airflow-{name}", state / "airflow") for name, _ in AIRFLOW_COMPONENTS]
        self.prepare = Process("prepare-ci", state / "prepare")
        self.env_file = state / "modelship.env"
        self.passwords_file = state / "airflow" / "simple_auth_manager_passwords.json.generated"

    def environment(self, kubernetes: bool = False) -> dict[str, str]:
        """Connections and settings for Airflow and the CLI, all pointing at the local stack."""
        return {
            **(kubernetes_environment(LocalCluster()) if kubernetes else {}),
            # For the modelship CLI's history and the demo: Airflow's REST API, as the admin user.
            "MODELSHIP_AIRFLOW_URL": f"http://127.0.0.1:{AIRFLOW_PORT}",
            "MODELSHIP_AIRFLOW_USER": "admin",
            "MODELSHIP_AIRFLOW_PASSWORD_FILE": str(self.passwords_file),
            **airflow_settings(self.state / "airflow", AIRFLOW_PORT),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            **connections(self.registry, self.azurite),
            "MODELSHIP_STATE": str(self.state),
            # The app's test environments, wheelhouses, model cache and source mirror: keyed by their inputs and
            # written atomically, so they are shared by every stack and test session on the machine and survive
            # `make down` and a fresh clone (a second clone's first ci run builds no test environment again).
            "MODELSHIP_CACHE": str(CACHE_DIR),
            "MODELSHIP_MODEL_STORE": f"wasb:{MODEL_CONTAINER}",
            "MODELSHIP_BASE_IMAGE": BASE_IMAGE,
            "MODELSHIP_DOCKER_HOST": self.docker.url,
            "DOCKER_HOST": self.docker.url,
            # This stack owns the registry: modelship gc reclaims the blobs of what it deleted (stops it briefly).
            "MODELSHIP_REGISTRY_GC_COMMAND": shlex.join(
                [sys.executable, "-m", "devstack", "--state", str(self.state), "registry-gc"]
            ),
            **openlineage_environment(self.state / "openlineage" / "events.jsonl"),
        }

    def write_env_file(self, env: dict[str, str]) -> None:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
        header = "# Written by `make up`: the local stack's connections and settings.\n"
        write_atomic(self.env_file, header + "\n".join(lines) + "\n", mode=0o600)  # it holds credentials

    def up(self, kubernetes: bool = False) -> None:
        if kubernetes:
            say("starting the local Kubernetes cluster (built once per machine, ≈ 8 min)…")
            LocalCluster().acquire(CLUSTER_LEASE)
        env = self.environment(kubernetes=kubernetes)
        self.write_env_file(env)
        # Airflow needs only its environment to start (≈ 30 s until its API answers), not the stand-ins it points
        # at; Azurite (npm install on a fresh machine, ≈ 30 s) and the Docker engine with its base image
        # (debootstrapped on a fresh machine, ≈ 25 s alone) start meanwhile. The scheduler comes last: a run it
        # starts at once (the nightly release and weekly maintenance it catches up on, a commit the watcher
        # announces) would otherwise meet a registry or store not up yet, fail and retry while the rest starts.
        with ThreadPoolExecutor(max_workers=2) as pool:
            airflow = pool.submit(self._start_airflow, env)
            azurite = pool.submit(self._start_azurite)
            try:
                self._start_engine_and_registry(env)
            finally:
                azurite.result()
                start_scheduler = airflow.result()
        if start_scheduler:
            start_scheduler()
        self._print_login()

    def _start_engine_and_registry(self, env: dict[str, str]) -> None:
        say("starting Docker engine (no bridge, host network)…")
        new_engine = self.docker.start()
        if new_engine:  # it may have no test environment yet
            self.start_prepare_ci(env)
        say("importing the local base image (no registry to pull from)…")
        self.docker.ensure_base_image()
        if new_engine:  # an engine that kept running lost no container (the next release heals the rest)
            self.heal_release()
        say(f"starting registry on {self.registry.address} (htpasswd auth)…")
        self.registry.start()

    def _start_azurite(self) -> None:
        say(f"starting Azurite on 127.0.0.1:{AZURITE_PORT}…")
        self.azurite.start()

    def heal_release(self, port: int | None = None) -> str | None:
        """Before anything else: a release cut off mid-swap (its worker killed, the machine restarted) can have
        left the docker target's app stopped; start its last container again and wait until it serves
        (DockerTarget.heal, which the next release would also run first). Its name, or None."""
        # The target's module imports Airflow, which writes into $AIRFLOW_HOME (else ~/airflow): this stack's.
        os.environ.setdefault("AIRFLOW_HOME", str(self.state / "airflow"))
        from modelship.deploy.docker import DockerTarget
        from modelship.settings import Settings

        port = port or Settings.get().docker_deploy_port
        client = self.docker.client()
        try:
            healed = DockerTarget(self.docker.url, port, client=client.api).heal()
        except Exception as exc:  # the stack still comes up; the next release tries again and says why
            say(f"warning: the app on 127.0.0.1:{port} is not serving and did not come back: {exc}")
            return None
        finally:
            client.close()
        if healed:
            say(f"the app on 127.0.0.1:{port} was not serving (a release cut off mid-swap): {healed} serves again")
        return healed

    def _start_airflow(self, env: dict[str, str]) -> Callable[[], None] | None:
        """Airflow's components but the scheduler, started and answering; what starts the scheduler (None: all
        of them were running already, with this environment)."""
        url = f"http://127.0.0.1:{AIRFLOW_PORT}/api/v2/monitor/health"
        # Airflow's components read their environment once: a changed one (make up K8S=1 after make up)
        # needs a restart, an unchanged one does not (make up is idempotent).
        started_with = self.state / "airflow" / "environment.sha256"
        digest = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()
        running = all(p.pid() for p in self.airflow) and _http_ok(url)
        if running and started_with.exists() and started_with.read_text() == digest:
            say("Airflow is already running")
            return None
        for proc in self.airflow:  # a half-running set (one component died) is restarted whole
            proc.stop()
        started_with.unlink(missing_ok=True)
        venv_bin = Path(sys.executable).parent
        airflow = str(venv_bin / "airflow")
        # Airflow's components start `airflow` subprocesses: the venv's bin must be on PATH.
        env = {**os.environ, **env, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
        say("migrating the Airflow database (SQLite)…")
        migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stderr[-2000:]}")
        airflow_passwords(self.passwords_file)
        components = dict(zip((name for name, _ in AIRFLOW_COMPONENTS), self.airflow, strict=True))
        say(f"starting Airflow (dag-processor, triggerer, api-server on 127.0.0.1:{AIRFLOW_PORT})…")
        for name, args in AIRFLOW_COMPONENTS:
            if name != "scheduler":
                components[name].spawn([airflow, *args], env=env, cwd=REPO_ROOT)
        wait_for(lambda: _http_ok(url), "Airflow API server", timeout=240, log=components["api-server"].log_file)

        def start_scheduler() -> None:
            say("starting Airflow's scheduler: the stack is up, runs may start")
            components["scheduler"].spawn([airflow, *dict(AIRFLOW_COMPONENTS)["scheduler"]], env=env, cwd=REPO_ROOT)
            write_atomic(started_with, digest)

        return start_scheduler

    def start_prepare_ci(self, env: dict[str, str]) -> None:
        """In the background, what the first ci run would otherwise start with (prepare_ci below); its log is
        <state>/prepare/prepare-ci.log. Started with the engine: it imports what it needs while the base image is
        made, and builds as soon as that is in the engine."""
        if self.prepare.pid() is None:
            say("preparing the app's test environment in the background (the first ci run picks it up)")
            self.prepare.spawn([sys.executable, "-m", "devstack", "--state", str(self.state), "prepare-ci"],
                               env=env, cwd=REPO_ROOT)  # fmt: skip

    def _print_login(self) -> None:
        passwords = self.passwords_file
        creds = json.loads(passwords.read_text()) if passwords.exists() else {}
        print(f"\nmodelship is up.\n  Airflow UI: http://127.0.0.1:{AIRFLOW_PORT}")
        for user, password in creds.items():
            print(f"  login:      {user} / {password}   (from {passwords})")
        print(f"  CLI:        source {self.env_file} && .venv/bin/modelship --help")
        print(f"  logs:       {self.state}/*/*.log\n  stop:       make down", flush=True)

    def down(self) -> None:
        cluster = LocalCluster()
        if (cluster.leases / CLUSTER_LEASE).exists():
            print("releasing the local Kubernetes cluster (stopped unless a test session still uses it)…", flush=True)
            cluster.release(CLUSTER_LEASE)
        for proc in [self.prepare, *self.airflow]:
            print(f"stopping {proc.name}…", flush=True)
            proc.stop()
        for name, component in (
            ("Azurite", self.azurite),
            ("registry", self.registry),
            ("Docker engine", self.docker),
        ):
            print(f"stopping {name}…", flush=True)
            component.stop()

    def status(self) -> dict[str, bool]:
        return {
            **{p.name: p.pid() is not None for p in self.airflow},
            "azurite": self.azurite.proc.pid() is not None,
            "registry": self.registry.proc.pid() is not None,
            "docker": self.docker.proc.pid() is not None,
            "kubernetes": (LocalCluster().leases / CLUSTER_LEASE).exists() and LocalCluster().ready(),
        }


def prepare_ci(checkout: Path = REPO_ROOT) -> None:
    """The app's test environment (an image keyed by the requirements) and the app image's wheelhouse for this
    checkout's requirements: what a first ci run would otherwise spend its first minute on. `make up` runs it in
    the background; a ci run that starts meanwhile waits for the environment's build (apptests: one build of an
    environment at a time per cache) and finds it done. Wheels only: nothing of the checkout's code runs."""
    from modelship import apptests, images
    from modelship.images.engine import api_of
    from modelship.settings import Settings

    settings = Settings.get()
    api = api_of(images.engine_client())
    deadline = time.monotonic() + 900
    while not api.images(name=settings.base_image):  # `make up` is importing it, debootstrapped first if need be
        if time.monotonic() > deadline:
            raise StackError(f"{settings.base_image} never reached the engine: see `make up`'s output")
        time.sleep(1)
    cache_dir = settings.cache_dir
    env = apptests.environment(checkout, cache_dir, api)
    say(f"test environment {env.tag}: {'built' if env.built else 'already built'}")
    say(f"wheelhouse {images.wheelhouse(checkout / 'app' / 'requirements.txt', cache_dir)}: ready")


def openlineage_environment(events_file: Path) -> dict[str, str]:
    """The OpenLineage provider on, writing every event as one JSON line to `events_file` (its folder is created).

    Lineage in the open standard: a START and a COMPLETE/FAIL event per task and DAG run, with modelship's
    artifacts (commit, model version, image digest, deployment) as datasets (modelship.openlineage). To
    send them to Marquez or any OpenLineage HTTP endpoint instead, set
    AIRFLOW__OPENLINEAGE__TRANSPORT='{"type": "http", "url": "http://127.0.0.1:5002"}' (README "Lineage").
    """
    events_file.parent.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "modelship",
        "AIRFLOW__OPENLINEAGE__EXTRACTORS": "modelship.openlineage.ModelshipExtractor",
        # The extractor reads the task's returned XCom. The provider's default, a forked child per event,
        # cannot: its request to the task supervisor is never answered, and the child is killed after
        # the timeout with the task's COMPLETE event unsent. A thread shares the supervisor channel safely.
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }


def say(message: str) -> None:
    """One line of progress, written whole: the stand-ins start in threads, and print() writes the text and its
    newline apart."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False
