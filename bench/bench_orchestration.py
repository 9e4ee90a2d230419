"""Orchestration: where a ci run's time outside the task bodies goes under Airflow's real components, and what
Airflow's own settings do about it. Target: <= 2 s outside the task bodies per run of eight tasks.

The probe is bench/dags/ci_shape.py: the ci DAG's eight chained tasks, decorated as dags/ci.py's are and
importing the same modules, with empty bodies, so a run of it is nothing but Airflow's own cost per task. Each
variant is a set of Airflow settings over devstack.stack.airflow_settings (what `make up` and the ci benchmark
run): real scheduler, dag-processor and api-server on SQLite, LocalExecutor, runs triggered over the REST API.

The profile splits every run (server-side clocks) into: trigger → first task scheduled; for each task, upstream
done → scheduled (the scheduler's loop noticing), scheduled → queued (its critical section), queued → started
(executor hand-off, worker, supervisor, fork, the Execution API's `run` call), started → parse begins (the
startup message, Airflow's plugins and listeners in the task process), the DAG-file parse in the task process,
and the rest of the task (body, XCom, the Execution API calls); last task done → run ends. Sources: the task
instances' timestamps, each task's log (parse begin, `dag_file_parse_ms`) and the api-server's access log
(Execution API calls, attributed to the task whose window they fall in).

Costs, per variant: the scheduler's own CPU while idle (its loop; on SQLite the database work happens inside it
too, so this is also the database load), the CPU of all Airflow components per run, and the memory (PSS) of
the scheduler with its executor's processes.

Variants are interleaved: every round starts each variant's components afresh, runs one untimed warm-up run
(the forkserver variants start their forkserver then), then the timed runs, then idles for the CPU reading.

    python -m bench.bench_orchestration [--rounds 2] [--runs 5] [--only defaults shipped]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench import REPO
from bench.components import BenchStack
from bench.dag_runs import AirflowServer
from bench.logs import log_file, run_cli
from bench.report import Report, loadavg, median

TOPIC = "orchestration"
DAG_ID = "ci_shape"
PROBE_DAGS = REPO / "bench" / "dags"
TARGET_GAP_S = 2.0
IDLE_WINDOW_S = 30.0

IDLE = "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"
START = "AIRFLOW__SCHEDULER__MP_START_METHOD"
PRELOAD = "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"
HEARTBEAT = "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"
# Airflow 3.3's defaults for every setting varied here (config.yml; the start method's default is the
# platform's, fork on Linux with Python 3.11): how the stacks ran before issue 19.
AIRFLOW_DEFAULTS = {IDLE: "1", START: "fork", PRELOAD: "", HEARTBEAT: "5"}
PRELOADED = {START: "forkserver", PRELOAD: "modelship.preload"}
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "defaults": (AIRFLOW_DEFAULTS, "Airflow's defaults (idle sleep 1 s, fork): main before issue 19"),
    "idle 0.25": ({**AIRFLOW_DEFAULTS, IDLE: "0.25"}, "scheduler_idle_sleep_time 0.25 s"),
    "idle 0.1": ({**AIRFLOW_DEFAULTS, IDLE: "0.1"}, "scheduler_idle_sleep_time 0.1 s"),
    "preload": ({**AIRFLOW_DEFAULTS, **PRELOADED}, "forkserver preloading modelship.preload (idle sleep 1 s)"),
    "new interpreter": ({**AIRFLOW_DEFAULTS, "AIRFLOW__CORE__EXECUTE_TASKS_NEW_PYTHON_INTERPRETER": "True"},
                        "execute_tasks_new_python_interpreter (a fresh interpreter per task)"),
    "heartbeat 5": ({HEARTBEAT: "5"}, "as shipped but min_heartbeat_interval 5 s (Airflow's default)"),
    "shipped": ({}, "devstack.stack.airflow_settings as shipped (idle sleep 0.25 s, fork, heartbeat interval 1 s)"),
}  # fmt: skip

PHASES = (
    ("trigger", "trigger → first task scheduled"),
    ("noticed", "upstream done → scheduled (scheduler loop)"),
    ("queued", "scheduled → queued (critical section)"),
    ("handoff", "queued → started (executor, worker, supervisor, fork, Execution API run)"),
    ("startup", "started → DAG parse begins (startup message, plugins, listeners)"),
    ("parse", "DAG-file parse in the task process"),
    ("task", "rest of the task (body, XCom, Execution API calls)"),
    ("finish", "last task done → run ends (scheduler loop)"),
)
OUTSIDE = ("trigger", "noticed", "queued", "handoff", "finish")  # between the tasks' start and end dates

_ACCESS = re.compile(r"^(\S+Z) .*request finished.* duration_us=(\d+) .*path=/execution/")


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _task_log(logs: Path | None, run_id: str, task_id: str, try_number: int) -> dict[str, float]:
    """When the task process began its DAG parse, and how long the parse took (from the task's own log)."""
    out: dict[str, float] = {}
    if logs is None:
        return out
    path = logs / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}" / f"attempt={try_number}.log"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        text = str(event.get("event", ""))
        if text.startswith("DAG bundles loaded") and "parse_begin" not in out:
            out["parse_begin"] = _ts(event["timestamp"])
        elif text == "Worker startup parse complete":
            out["parse_s"] = float(event.get("dag_file_parse_ms", 0)) / 1000
    return out


def _execution_calls(access_log: str, since: float) -> list[tuple[float, float]]:
    """(finish time, server seconds) of every Execution API request the api-server logged after `since`."""
    calls = []
    for line in access_log.splitlines():
        m = _ACCESS.match(line)
        if m and (ts := _ts(m.group(1))) >= since:
            calls.append((ts, int(m.group(2)) / 1e6))
    return calls


def profile(api: Any, run_id: str, wall: float, logs: Path | None, access_log: str) -> dict[str, Any]:
    """One run split into PHASES (seconds, summed over its tasks), with its Execution API calls. `logs`: the task
    logs' folder (None: no parse figures); `access_log`: the api-server's log text (its Execution API calls)."""
    run = api.run(DAG_ID, run_id)
    tis = sorted(api.tasks(DAG_ID, run_id), key=lambda ti: _ts(ti.start_date))
    phases = dict.fromkeys((k for k, _ in PHASES), 0.0)
    begun = _ts(run.queued_at)
    calls = _execution_calls(access_log, begun)
    upstream_done = None
    api_calls, api_s = 0, 0.0
    for ti in tis:
        scheduled, queued = _ts(ti.scheduled_when), _ts(ti.queued_when)
        started, ended = _ts(ti.start_date), _ts(ti.end_date)
        if upstream_done is None:
            phases["trigger"] += scheduled - begun
        else:
            phases["noticed"] += scheduled - upstream_done
        phases["queued"] += queued - scheduled
        phases["handoff"] += started - queued
        logged = _task_log(logs, run_id, ti.task_id, ti.try_number or 1)
        parse_begin = logged.get("parse_begin", started)
        parse_s = logged.get("parse_s", 0.0)
        phases["startup"] += max(0.0, parse_begin - started)
        phases["parse"] += parse_s
        phases["task"] += ended - max(started, parse_begin) - parse_s
        mine = [s for ts, s in calls if queued <= ts <= ended + 0.05]
        api_calls += len(mine)
        api_s += sum(mine)
        upstream_done = ended
    phases["finish"] += _ts(run.end_date) - (upstream_done or begun)
    tasks_sum = sum(_ts(ti.end_date) - _ts(ti.start_date) for ti in tis)
    server_wall = _ts(run.end_date) - begun
    return {
        "state": run.state.value if hasattr(run.state, "value") else str(run.state),
        "wall": wall,
        "server_wall": server_wall,
        "tasks_sum": tasks_sum,
        "outside": server_wall - tasks_sum,
        "phases": phases,
        "api_calls": api_calls / max(1, len(tis)),
        "api_ms": 1000 * api_s / max(1, len(tis)),
        "tasks": len(tis),
    }


# ---------------------------------------------------------------------------------------------- costs


def _tree(pid: int | None) -> list[psutil.Process]:
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pids: list[int | None], own_only: bool = False) -> float:
    """CPU seconds (user + system) of these processes, and unless own_only of their descendants, living or reaped."""
    total = 0.0
    for pid in pids:
        for proc in _tree(pid)[:1] if own_only else _tree(pid):
            try:
                t = proc.cpu_times()
                total += t.user + t.system + (0 if own_only else t.children_user + t.children_system)
            except psutil.NoSuchProcess:
                pass
    return total


def pss_mb(pid: int | None) -> float:
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total / 1e6


# ---------------------------------------------------------------------------------------------- runs


def block(root: Path, env: dict[str, str], name: str, runs: int) -> dict[str, Any]:
    """Start the components with variant `name`, warm up, time `runs` runs, idle for the CPU reading."""
    settings = {**VARIANTS[name][0], "AIRFLOW__CORE__DAGS_FOLDER": str(PROBE_DAGS)}
    home = root / ("airflow-" + re.sub(r"\W+", "-", name))
    with AirflowServer(home, env, settings) as server:
        server.wait_for_dag(DAG_ID)
        scheduler, processor, api = (p.pid() for p in server.procs)
        warm = server.run(DAG_ID, {})
        if warm.state != "success":
            raise RuntimeError(f"{name}: warm-up run {warm.state}: {warm.tasks}; see {home}")
        profiles = []
        cpu_before = cpu_seconds([scheduler, processor, api])
        for _ in range(runs):
            started = time.perf_counter()
            run_id = server.api.trigger(DAG_ID, {})
            server.api.wait(DAG_ID, run_id, timeout=600, interval=0.25)
            wall = time.perf_counter() - started
            access_log = (server.home / "airflow-api-server.log").read_text(errors="replace")
            p = profile(server.api, run_id, wall, server.home / "logs", access_log)
            p["load1"] = loadavg()[0]
            if p["state"] != "success":
                raise RuntimeError(f"{name}: run {run_id} {p['state']}; see {home}")
            profiles.append(p)
        cpu_runs = (cpu_seconds([scheduler, processor, api]) - cpu_before) / runs
        memory = pss_mb(scheduler)
        time.sleep(5)  # the last run's stragglers (the executor reaping its worker's result)
        idle_before = cpu_seconds([scheduler], own_only=True), cpu_seconds([scheduler, processor, api])
        time.sleep(IDLE_WINDOW_S)
        idle_after = cpu_seconds([scheduler], own_only=True), cpu_seconds([scheduler, processor, api])
    return {
        "profiles": profiles,
        "cpu_per_run_s": cpu_runs,
        "scheduler_idle_pct": 100 * (idle_after[0] - idle_before[0]) / IDLE_WINDOW_S,
        "all_idle_pct": 100 * (idle_after[1] - idle_before[1]) / IDLE_WINDOW_S,
        "scheduler_pss_mb": memory,
    }


def main(rounds: int, runs: int, only: list[str] | None) -> Report:
    names = only or list(VARIANTS)
    report = Report(TOPIC, "Orchestration: Airflow's own cost per ci run, where it goes, and the settings that cut it")
    logs = log_file(TOPIC)
    logs.unlink(missing_ok=True)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with BenchStack(TOPIC) as stack:
        env = stack.env()
        stack.apply(env)
        for round_ in range(rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                out = block(stack.root, env, name, runs)
                results[name].append(out)
                gaps = [p["outside"] for p in out["profiles"]]
                print(f"round {round_ + 1}/{rounds} {name}: outside the tasks {median(gaps):.2f} s "
                      f"({min(gaps):.2f}-{max(gaps):.2f}), wall {median([p['wall'] for p in out['profiles']]):.2f} s, "
                      f"scheduler idle {out['scheduler_idle_pct']:.1f} % of a core  (load {loadavg()})",
                      flush=True)  # fmt: skip

    def series(name: str, key: str) -> list[float]:
        return [p[key] for out in results[name] for p in out["profiles"]]

    baseline = "defaults" if "defaults" in results else names[0]
    for name in names:
        if name == baseline:
            continue
        report.add(f"ci_shape, time outside the task bodies: {name}", VARIANTS[baseline][1],
                   series(baseline, "outside"), VARIANTS[name][1], series(name, "outside"), "s")  # fmt: skip
    if "shipped" in results:
        gaps = series("shipped", "outside")
        report.note(f"target: <= {TARGET_GAP_S} s outside the task bodies per run of eight tasks, as shipped: median "
                    f"{median(gaps):.2f} s ({'met' if median(gaps) <= TARGET_GAP_S else 'MISSED'}); runs "
                    f"{[round(g, 2) for g in gaps]}")  # fmt: skip
        report.add("ci_shape wall clock (trigger → run seen finished)", VARIANTS[baseline][1], series(baseline, "wall"),
                   VARIANTS["shipped"][1], series("shipped", "wall"), "s")  # fmt: skip

    report.table("Where a run's time goes: median seconds per run, summed over its 8 tasks", [
        {"phase": label, **{name: round(median([p["phases"][key] for p in (pp for out in results[name]
                                                                           for pp in out["profiles"])]), 3)
                            for name in names}}
        for key, label in PHASES
    ] + [
        {"phase": "outside the task bodies (run − Σ task durations)",
         **{n: round(median(series(n, "outside")), 3) for n in names}},
        {"phase": "Σ task durations", **{n: round(median(series(n, "tasks_sum")), 3) for n in names}},
        {"phase": "run, server clocks (queued → ended)", **{n: round(median(series(n, "server_wall")), 3)
                                                            for n in names}},
        {"phase": "wall clock as the client saw it (POST → polled finished, every 0.25 s)",
         **{n: round(median(series(n, "wall")), 3) for n in names}},
        {"phase": "Execution API calls per task", **{n: round(median(series(n, "api_calls")), 1) for n in names}},
        {"phase": "Execution API server ms per task", **{n: round(median(series(n, "api_ms")), 1) for n in names}},
    ])  # fmt: skip
    report.table("Costs of each variant (median over its blocks)", [
        {"variant": name, "settings": json.dumps(VARIANTS[name][0]) if VARIANTS[name][0] else "(as shipped)",
         "outside the tasks s (min–max)": f"{median(series(name, 'outside')):.2f} "
                                          f"({min(series(name, 'outside')):.2f}–{max(series(name, 'outside')):.2f})",
         "scheduler CPU idle, % of a core": round(median([o["scheduler_idle_pct"] for o in results[name]]), 1),
         "all components CPU idle, % of a core": round(median([o["all_idle_pct"] for o in results[name]]), 1),
         "CPU s per run, all components": round(median([o["cpu_per_run_s"] for o in results[name]]), 2),
         "scheduler + executor PSS MB": round(median([o["scheduler_pss_mb"] for o in results[name]]), 0)}
        for name in names
    ])  # fmt: skip
    report.table("Every run", [
        {"variant": name, "block": b + 1, "run": i + 1, "outside s": round(p["outside"], 2),
         "Σ tasks s": round(p["tasks_sum"], 2), "wall s": round(p["wall"], 2),
         **{key: round(p["phases"][key], 2) for key, _ in PHASES}, "load1": p["load1"]}
        for name in names for b, out in enumerate(results[name]) for i, p in enumerate(out["profiles"])
    ])  # fmt: skip
    report.note(f"{rounds} round(s); in each, every variant's components started afresh, one untimed warm-up "
                f"run, {runs} timed runs, then {IDLE_WINDOW_S:.0f} s idle for the CPU reading. Probe: "
                "bench/dags/ci_shape.py (8 chained tasks, empty bodies, dags/ci.py's imports). SQLite, LocalExecutor, "
                "parallelism 4.")  # fmt: skip
    report.note("On SQLite the database runs inside each component, so the scheduler's idle CPU is also its database "
                "load; the compose stack's Postgres figures are in the distributed section.")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS))
    args = parser.parse_args()
    run_cli(lambda: main(args.rounds, args.runs, args.only))
