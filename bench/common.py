"""What every benchmark shares: the real components, the environment, timing, and the results file.

The components are the ones `make up` and the test harness start (devstack.components): a private
Docker engine (no bridge, host network), the Distribution registry with htpasswd auth, and Azurite, each
on a free loopback port in a private folder under ``.state/bench/`` that is removed afterwards. Airflow
runs in-process with ``dag.test()`` against a private SQLite home, or as real components (scheduler,
dag-processor, api-server) through ``AirflowServer``.

A benchmark builds a ``Report`` of ``Measurement``s (a named baseline, a result, their ratio, the
target) and saves it as JSON; ``bench.run_all`` turns every saved report into bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import devstack

# Imported before any MODELSHIP_CACHE is set: devstack resolves the shared cache (Azurite's npm
# install, the base rootfs) at import time, and the benchmarks must keep using that one.
from devstack import components, process, rootfs, stack
from modelship import net

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MODELSHIP_BENCH_STATE", REPO / ".state" / "bench"))
RESULTS_DIR = STATE / "results"
SHARED_CACHE = devstack.CACHE_DIR
MODEL_NAME = "digits"
REPOSITORY = "modelship/digits-app"

log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------- machine


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": loadavg(),
    }


# --------------------------------------------------------------------------------------------- numbers


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """`with stopwatch() as t: ...` then t["s"] holds the elapsed seconds."""
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - started


# --------------------------------------------------------------------------------------------- reports


@dataclass
class Measurement:
    """One ratio: a named baseline, a result, and result ÷ baseline (or the inverse, for throughput)."""

    name: str
    baseline_label: str
    baseline: float
    result_label: str
    result: float
    unit: str
    ratio: float
    ratio_label: str = "result ÷ baseline"
    target: str = ""  # e.g. "<= 1.15"
    met: bool | None = None
    runs: int = 0
    baseline_runs: list[float] = field(default_factory=list)
    result_runs: list[float] = field(default_factory=list)

    def line(self) -> str:
        verdict = ""
        if self.target:
            verdict = f" (target {self.target}: {'met' if self.met else 'MISSED'})"
        return (
            f"{self.name}: baseline {self.baseline_label} {fmt(self.baseline, self.unit)}, "
            f"result {self.result_label} {fmt(self.result, self.unit)}, ratio {self.ratio:.3f}{verdict}"
        )


def check(ratio: float, target: str) -> bool:
    op, _, value = target.partition(" ")
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


@dataclass
class Report:
    topic: str
    title: str
    measurements: list[Measurement] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    load_end: list[float] = field(default_factory=list)
    seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def add(
        self,
        name: str,
        baseline_label: str,
        baseline_runs: list[float],
        result_label: str,
        result_runs: list[float],
        unit: str,
        *,
        higher_is_better: bool = False,
        target: str = "",
        met: bool | None = None,
    ) -> Measurement:
        """Medians of both series and their ratio; for throughput (higher_is_better) result ÷ baseline too.

        `target` is checked against the ratio ("<= 1.15", ">= 0.8") unless `met` says otherwise (a target
        that is not a ratio, e.g. seconds over the baseline).
        """
        base, res = median(baseline_runs), median(result_runs)
        ratio = res / base if base else float("nan")
        m = Measurement(
            name=name,
            baseline_label=baseline_label,
            baseline=base,
            result_label=result_label,
            result=res,
            unit=unit,
            ratio=ratio,
            ratio_label="result ÷ baseline (throughput)" if higher_is_better else "result ÷ baseline",
            target=target,
            met=met if met is not None else (check(ratio, target) if target else None),
            runs=min(len(baseline_runs), len(result_runs)),
            baseline_runs=[round(x, 4) for x in baseline_runs],
            result_runs=[round(x, 4) for x in result_runs],
        )
        self.measurements.append(m)
        print(m.line(), flush=True)
        return m

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def table(self, title: str, rows: list[dict[str, Any]]) -> None:
        self.tables[title] = rows

    def save(self) -> Path:
        self.load_end = loadavg()
        self.seconds = round(time.monotonic() - self._started, 1)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.topic}.json"
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"saved {path} ({self.seconds:.0f} s; load {self.machine['load']} → {self.load_end})", flush=True)
        return path


# --------------------------------------------------------------------------------------------- stack


def private_cache(root: Path) -> Path:
    """A MODELSHIP_CACHE whose model cache is private and empty, the rest (wheelhouse, test venvs,
    Azurite's npm install, base rootfs) links to the shared cache: those are keyed by their inputs and
    rebuilding them would measure PyPI and debootstrap, not modelship."""
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    for name in ("wheels", "testenv", "azurite", "base"):
        (SHARED_CACHE / name).mkdir(exist_ok=True)
        link = cache / name
        if not link.is_symlink():
            link.symlink_to(SHARED_CACHE / name)
    (cache / "models").mkdir(exist_ok=True)
    return cache


def clear_model_cache(env: dict[str, str]) -> None:
    models = Path(env["MODELSHIP_CACHE"]) / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)


class BenchStack:
    """Docker engine + registry + Azurite on free loopback ports, in a private folder; always stopped."""

    def __init__(self, name: str) -> None:
        self.root = STATE / name
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.docker = components.DockerEngine(self.root / "docker")
        self.registry = components.Registry(self.root / "registry", port=net.free_port())
        self.azurite = components.Azurite(self.root / "azurite", port=net.free_port())
        self.cache = private_cache(self.root)

    def __enter__(self) -> BenchStack:
        try:
            self.docker.start()
            self.docker.ensure_base_image()
            self.registry.start()
            self.azurite.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for component in (self.azurite, self.registry, self.docker):
            with contextlib.suppress(Exception):
                component.stop()
        if not os.environ.get("MODELSHIP_BENCH_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def env(self, container: str = "bench-models") -> dict[str, str]:
        """Settings and connections for modelship and the DAGs, like tests/e2e's pipeline_env."""
        return {
            "MODELSHIP_STATE": str(self.root / "modelship"),
            "MODELSHIP_CACHE": str(self.cache),
            "MODELSHIP_MODEL_STORE": f"wasb:{container}",
            "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
            "MODELSHIP_DOCKER_HOST": self.docker.url,
            "MODELSHIP_DOCKER_DEPLOY_PORT": str(net.free_port()),
            **stack.connections(self.registry, self.azurite),
        }

    def apply(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    def docker_api(self):
        import docker

        return docker.APIClient(base_url=self.docker.url, timeout=600)


# --------------------------------------------------------------------------------------------- airflow


def airflow_env(home: Path) -> dict[str, str]:
    return {**stack.airflow_project(home), "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}


def use_airflow_home(home: Path) -> None:
    """Point this process's Airflow at a fresh private home and migrate its DB (before importing airflow)."""
    if "airflow" in sys.modules:
        raise RuntimeError("use_airflow_home() must run before anything imports airflow")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ.update(airflow_env(home))
    migrate(dict(os.environ))


def migrate(env: dict[str, str]) -> None:
    airflow = str(Path(sys.executable).parent / "airflow")
    done = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-1500:]}\n{done.stderr[-2000:]}")


@dataclass
class DagRunTiming:
    state: str
    seconds: float  # wall clock of the whole run as the caller saw it
    tasks: dict[str, dict[str, Any]]  # task_id → state, seconds, tries

    @property
    def task_seconds(self) -> float:
        return sum(t["seconds"] or 0.0 for t in self.tasks.values())


_dags: dict[str, Any] = {}


def load_dag(dag_id: str):
    """The DAG from dags/<dag_id>.py, parsed once per process (the parse is benchmarked on its own)."""
    if dag_id not in _dags:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"), safe_mode=False)
        if bag.import_errors:
            raise RuntimeError(f"dags/{dag_id}.py does not import: {bag.import_errors}")
        _dags[dag_id] = bag.get_dag(dag_id)
    return _dags[dag_id]


def run_dag(dag_id: str, conf: dict[str, Any]) -> DagRunTiming:
    """dag.test() of a DAG: the real task code in this process against the private DB; timed."""
    from airflow.utils.session import create_session

    dag = load_dag(dag_id)
    with stopwatch() as t:
        dag_run = dag.test(run_conf=conf)
    tasks = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            tasks[ti.task_id] = {"state": str(ti.state), "seconds": ti.duration, "tries": ti.try_number}
    return DagRunTiming(state=str(dag_run.state), seconds=t["s"], tasks=tasks)


class AirflowServer:
    """Airflow's own components, as `make up` starts them (modelship.stack), minus the triggerer.

    The triggerer runs the `commits` watcher, which would start CI runs by itself for every bench commit;
    runs here are triggered through the REST API instead, so every run is one the benchmark asked for.
    """

    COMPONENTS = (
        ("scheduler", ["scheduler", "--skip-serve-logs"]),
        ("dag-processor", ["dag-processor"]),
        ("api-server", ["api-server"]),
    )

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = net.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        venv_bin = Path(sys.executable).parent
        self.airflow = str(venv_bin / "airflow")
        self.env = {
            **os.environ,
            **env,
            **airflow_env(home),
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
            **stack.airflow_settings(home, self.port),
        }
        self.procs = [process.Process(f"airflow-{name}", home) for name, _ in self.COMPONENTS]
        self._token = ""
        self.slow_polls = 0  # status polls the api-server did not answer in time (shown in the results)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> AirflowServer:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        migrate(self.env)
        try:
            for proc, (_, args) in zip(self.procs, self.COMPONENTS, strict=True):
                proc.spawn([self.airflow, *args], env=self.env, cwd=REPO)
            net.wait_for(self._healthy, "Airflow API server", timeout=240, log=self.procs[-1].log_file)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def _healthy(self) -> bool:
        try:
            with self._opener.open(f"{self.base}/api/v2/monitor/health", timeout=3) as response:
                return response.status == 200
        except OSError:
            return False

    def _retry(self, fn: Callable[[], Any], attempts: int = 5) -> Any:
        for attempt in range(attempts):
            try:
                return fn()
            except OSError:
                if attempt == attempts - 1:
                    raise
                time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True, timeout: float = 60) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
        with self._opener.open(request, timeout=timeout) as response:
            return json.load(response)

    def token(self) -> str:
        if not self._token:
            passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
            user, password = next(iter(passwords.items()))
            credentials = {"username": user, "password": password}
            self._token = self._retry(lambda: self._request("POST", "/auth/token", credentials, auth=False))[
                "access_token"
            ]
        return self._token

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        def parsed() -> bool:
            try:
                self._request("GET", f"/api/v2/dags/{dag_id}")
                return True
            except OSError:
                return False

        net.wait_for(parsed, f"DAG {dag_id} parsed by the dag-processor", timeout=timeout,
                            log=self.procs[1].log_file)  # fmt: skip
        self._retry(lambda: self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}))

    def run(self, dag_id: str, conf: dict[str, Any], timeout: float = 1800) -> DagRunTiming:
        """Trigger through the REST API and poll until the run ends; the wall clock includes scheduling."""
        started = time.perf_counter()
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        state = run["state"]
        while state not in ("success", "failed"):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f}s")
            time.sleep(0.25)
            try:
                state = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=10)["state"]
            except OSError as exc:  # a busy api-server (SQLite, a loaded machine): ask again
                self.slow_polls += 1
                log.info("polling %s run %s: %s", dag_id, run_id, exc)
        seconds = time.perf_counter() - started
        listing = self._retry(lambda: self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))
        tasks = {
            ti["task_id"]: {"state": ti["state"], "seconds": ti["duration"], "tries": ti["try_number"]}
            for ti in listing["task_instances"]
        }
        return DagRunTiming(state=state, seconds=seconds, tasks=tasks)


# --------------------------------------------------------------------------------------------- source, model


class SourceRepo:
    """A throwaway clone of this repository's HEAD; each code_change() is one more code-only commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.rmtree(path, ignore_errors=True)
        self._git("clone", "-q", str(REPO), str(path), cwd=REPO)
        self.changes = 0

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(["git", *args], cwd=cwd or self.path, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    def code_change(self) -> str:
        """Commit a change to app code only (a comment in routes.py): new layers for the code, nothing else."""
        self.changes += 1
        routes = self.path / "app" / "classifier" / "routes.py"
        routes.write_text(routes.read_text() + f"# bench change {self.changes} at {time.time_ns()}\n")
        self._git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                  f"bench: code-only change {self.changes}")  # fmt: skip
        return self.head()


def train(root: Path, version: str) -> Path:
    from training.train import train_package

    out = root / f"model-{version}"
    shutil.rmtree(out, ignore_errors=True)
    train_package(out, version=version)
    return out


def publish_and_promote(package: Path, alias: str = "production") -> dict[str, Any]:
    from modelpkg.manifest import read_manifest
    from modelship.model_store import open_store

    store = open_store()
    manifest = read_manifest(package)
    try:
        store.publish(package)
    except Exception as exc:  # VersionExists on a re-run is fine
        if type(exc).__name__ != "VersionExists":
            raise
    store.promote(manifest["name"], manifest["version"], alias)
    return manifest


# --------------------------------------------------------------------------------------------- recorders


class PushRecorder:
    """Records every push's stream (layer id → statuses, bytes) by wrapping images._read_push_stream."""

    def __init__(self) -> None:
        self.pushes: list[dict[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[PushRecorder]:
        from modelship import images

        original = images._read_push_stream

        def wrapper(stream: Any, *args: Any, **kwargs: Any) -> str:
            layers: dict[str, dict[str, Any]] = {}
            self.pushes.append(layers)

            def tee() -> Iterator[dict[str, Any]]:
                for chunk in stream:
                    layer = chunk.get("id")
                    if layer and chunk.get("status"):
                        entry = layers.setdefault(layer, {"statuses": [], "bytes": 0})
                        if chunk["status"] not in entry["statuses"]:
                            entry["statuses"].append(chunk["status"])
                        total = (chunk.get("progressDetail") or {}).get("total") or 0
                        entry["bytes"] = max(entry["bytes"], total)
                    yield chunk

            return original(tee(), *args, **kwargs)

        images._read_push_stream = wrapper
        try:
            yield self
        finally:
            images._read_push_stream = original


class StoreRecorder:
    """Keeps every model store the ci steps open, so their stats counters can be read after a DAG run."""

    def __init__(self) -> None:
        self.stores: list[Any] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[StoreRecorder]:
        from modelship import ci

        original = ci.open_store

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            store = original(*args, **kwargs)
            self.stores.append(store)
            return store

        ci.open_store = wrapper
        try:
            yield self
        finally:
            ci.open_store = original

    def total(self, counter: str) -> int:
        return sum(getattr(store.stats, counter) for store in self.stores)


def model_layer(api: Any, image: str) -> str | None:
    """12-hex prefix of the diff id of the image's `COPY --from=model /model /model` layer (as push shows it).

    Classic-builder history, oldest first: the imported base layer, then one layer per RUN/COPY/ADD;
    other instructions are metadata ("#(nop)" without COPY/ADD). None if that mapping does not add up.
    """
    layers = api.inspect_image(image)["RootFS"]["Layers"]
    history = list(reversed(api.history(image)))
    producing = [h for h in history if "#(nop)" not in h["CreatedBy"] or "#(nop) COPY" in h["CreatedBy"]
                 or "#(nop) ADD" in h["CreatedBy"]]  # fmt: skip
    if len(producing) != len(layers):
        return None
    for entry, diff_id in zip(producing, layers, strict=True):
        if "COPY" in entry["CreatedBy"] and entry["CreatedBy"].rstrip().endswith(" in /model"):
            return diff_id.split(":", 1)[1][:12]
    return None


# --------------------------------------------------------------------------------------------- images


def build_and_push(
    stack: BenchStack, source: SourceRepo, commit: str, model_dir: Path, tag: str, *, push: bool = True
) -> dict[str, str]:
    """Build the app image for (commit, model) with modelship.images, optionally push; ids and digest."""
    from modelpkg.manifest import manifest_sha256, read_manifest
    from modelship import images
    from modelship import source as src

    manifest = read_manifest(model_dir)
    work = stack.root / "build" / tag
    shutil.rmtree(work, ignore_errors=True)
    checkout = work / "src"
    full = src.checkout(str(source.path), commit, checkout)
    wheels = images.wheelhouse(checkout / "app" / "requirements.txt", stack.cache)
    context = images.build_context(checkout / "app", model_dir, wheels, work / "context")
    lineage = images.Lineage(commit=full, model_name=manifest["name"], model_version=manifest["version"],
                             model_sha256=manifest_sha256(model_dir), source=str(source.path))  # fmt: skip
    api = stack.docker_api()
    built = images.build_image(api, context, f"{REPOSITORY}:{tag}", lineage.build_args(rootfs.BASE_IMAGE))
    out = {"image_id": built.id, "commit": full, "model_version": manifest["version"], "tag": tag}
    if push:
        out["digest"] = images.push_image(api, built.id, REPOSITORY, tag, registry_conn="modelship_registry").digest
        out["ref"] = f"{stack.registry.address}/{REPOSITORY}@{out['digest']}"
    shutil.rmtree(work, ignore_errors=True)
    return out


def sample_request() -> bytes:
    """The /score body every serving benchmark sends: one held-out digit as a 64x64 PNG."""
    import base64

    from modelship.images import sample_digit

    png, _ = sample_digit()
    return json.dumps({"images": [base64.b64encode(png).decode("ascii")]}).encode()


def wait_http(port: int, path: str = "/readyz", timeout: float = 60) -> None:
    def ok() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False

    net.wait_for(ok, f"127.0.0.1:{port}{path}", timeout=timeout)


# --------------------------------------------------------------------------------------------- load


class ConstantLoad:
    """A light, constant open-loop load: `rate` POST /score a second on a fresh connection each.

    Every request is recorded (time, ok, what went wrong), so a benchmark can count the failures in a
    window, e.g. during a release's swap.
    """

    def __init__(self, port: int, body: bytes, rate: float = 10.0, timeout: float = 5.0) -> None:
        self.port, self.body, self.interval, self.timeout = port, body, 1.0 / rate, timeout
        self.records: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _one(self) -> None:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            conn.request("POST", "/score", self.body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            conn.close()
            ok, detail = response.status == 200, str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            ok, detail = False, type(exc).__name__
        with self._lock:
            self.records.append((started, ok, detail))

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> ConstantLoad:
        self._runner = threading.Thread(target=self._loop, daemon=True)
        self._runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._runner.join()
        for thread in self._threads:
            thread.join(self.timeout + 1)

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[tuple[float, bool, str]]:
        return [r for r in self.records if start <= r[0] <= end and not r[1]]


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so Airflow's structlog too) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def log_file(topic: str) -> Path:
    return STATE / "logs" / f"{topic}.log"


def quiet_logs() -> None:
    """INFO from modelship, WARNING from everything else (dag.test() is chatty)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("bench", "modelship"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_cli(fn: Callable[[], Report]) -> None:
    """Entry point of each bench module: run, save the report, exit non-zero only on a crash."""
    quiet_logs()
    report = fn()
    report.save()
