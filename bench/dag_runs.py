"""The DAGs, run and timed: in-process with ``dag.test()`` against a private SQLite home, or as real
Airflow components (scheduler, dag-processor, api-server) triggered through the REST API
(modelship.airflow_api), as `make up` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO
from bench.components import Running
from bench.report import stopwatch
from devstack import process, stack
from modelship import airflow_api, net
from modelship.airflow_api import AirflowAPI


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
    tasks: dict[str, dict[str, Any]]  # task_id → state, seconds, tries, start and end (epoch seconds)

    @property
    def task_seconds(self) -> float:
        return sum(t["seconds"] or 0.0 for t in self.tasks.values())

    @property
    def busy_seconds(self) -> float:
        """Seconds in which at least one task body ran (the union of the tasks' start-end intervals): with
        tasks side by side (test ∥ fetch_model) the plain sum counts their overlap twice."""
        spans = sorted((t["start"], t["end"]) for t in self.tasks.values() if t.get("start") and t.get("end"))
        busy, reached = 0.0, float("-inf")
        for start, end in spans:
            busy += max(0.0, end - max(start, reached))
            reached = max(reached, end)
        return busy


def _task(ti: Any) -> dict[str, Any]:
    """What DagRunTiming keeps of a task instance (an ORM row or the REST API's model)."""
    state = getattr(ti.state, "value", ti.state)
    start, end = ti.start_date, ti.end_date
    return {"state": state and str(state), "seconds": ti.duration, "tries": ti.try_number,
            "start": start and start.timestamp(), "end": end and end.timestamp()}  # fmt: skip


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
            tasks[ti.task_id] = _task(ti)
    return DagRunTiming(state=str(dag_run.state), seconds=t["s"], tasks=tasks)


class AirflowServer(Running):
    """Airflow's own components, as `make up` starts them (devstack.stack), minus the triggerer.

    The triggerer runs the `commits` watcher, which would start CI runs by itself for every bench commit;
    runs here are triggered through the REST API instead, so every run is one the benchmark asked for.
    """

    COMPONENTS = tuple((name, args) for name, args in stack.AIRFLOW_COMPONENTS if name != "triggerer")
    PATIENCE = 60  # seconds: a busy api-server (SQLite, a loaded machine) may miss a poll; ask again

    def __init__(
        self, home: Path, env: dict[str, str], settings: dict[str, str] | None = None, *, triggerer: bool = False
    ) -> None:
        """`settings`: Airflow settings over stack.airflow_settings (a variant under test, another dags folder);
        `triggerer`: start it too (its commits watcher then starts ci runs by itself)."""
        self.components = stack.AIRFLOW_COMPONENTS if triggerer else self.COMPONENTS
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
            **(settings or {}),
        }
        self.procs = [process.Process(f"airflow-{name}", home) for name, _ in self.components]
        self._api: AirflowAPI | None = None

    def start(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        migrate(self.env)
        for proc, (_, args) in zip(self.procs, self.components, strict=True):
            proc.spawn([self.airflow, *args], env=self.env, cwd=REPO)
        net.wait_for(lambda: airflow_api.healthy(self.base), "Airflow API server", timeout=240,
                     log=self.procs[-1].log_file)  # fmt: skip

    def stop(self) -> None:
        if self._api:
            self._api.close()
        for proc in self.procs:
            proc.stop()

    @property
    def api(self) -> AirflowAPI:
        """The REST API as the admin user (the simple auth manager writes its password once it is up)."""
        if self._api is None:
            password = airflow_api.password_from_file(self.home / airflow_api.PASSWORDS_FILE, "admin")
            self._api = AirflowAPI.login(self.base, "admin", password, patience=self.PATIENCE)
        return self._api

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has parsed `dag_id` (its log: airflow-dag-processor.log); then unpause it."""
        self.api.wait_for_dags([dag_id], timeout=timeout)
        self.api.unpause(dag_id)

    def run(self, dag_id: str, conf: dict[str, Any], timeout: float = 1800) -> DagRunTiming:
        """Trigger through the REST API and poll until the run ends; the wall clock includes scheduling."""
        started = time.perf_counter()
        run_id = self.api.trigger(dag_id, conf)
        run = self.api.wait(dag_id, run_id, timeout=timeout, interval=0.25)
        seconds = time.perf_counter() - started
        tasks = {ti.task_id: _task(ti) for ti in self.api.tasks(dag_id, run_id)}
        return DagRunTiming(state=run.state.value, seconds=seconds, tasks=tasks)
