"""Orchestration on the compose stack (CeleryExecutor, Postgres, Redis, two workers): Airflow's own cost per ci run,
and what the settings docker-compose.airflow.yml ships do about it, against Airflow's defaults.

The same probe as bench_orchestration (bench/dags/ci_shape.py: the ci DAG's eight tasks with empty bodies) in the
stack `make up-distributed` runs (devstack.compose.Distributed, on free ports in a private state folder), its DAGs
folder pointed at bench/dags by one more compose file. Each variant is a set of Airflow settings for every Airflow
service, applied with `docker-compose up -d` (which recreates the services whose environment changed); variants
are interleaved in rounds. Per variant: the runs split into the same phases (task instances' timestamps, the task
logs from the logs volume, the api-server's access log), and the costs: Postgres transactions per second and the
scheduler's and Postgres' CPU while idle (the database load of the scheduler's loop), CPU of all containers per run.

    python -m bench.bench_distributed [--rounds 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench import REPO, STATE
from bench.bench_orchestration import DAG_ID, IDLE, OUTSIDE, PHASES, profile
from bench.logs import run_cli
from bench.report import Report, loadavg, median
from devstack import compose
from modelship.airflow_api import AirflowAPI

TOPIC = "distributed"
IDLE_WINDOW_S = 30.0
SERVICES = ("airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            *compose.WORKERS)  # fmt: skip
CELERY = "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"
AIRFLOW_DEFAULTS = {IDLE: "1", CELERY: "airflow.providers.celery.executors.default_celery.DEFAULT_CELERY_CONFIG"}
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "defaults": (AIRFLOW_DEFAULTS, "Airflow's defaults (idle sleep 1 s, Celery's default config)"),
    "idle 0.1": ({**AIRFLOW_DEFAULTS, IDLE: "0.1"}, "scheduler_idle_sleep_time 0.1 s"),
    "shipped": ({}, "docker-compose.airflow.yml as shipped (idle sleep 0.1 s, workers preload modelship.preload)"),
}
BENCH_DAGS = "/opt/bench/dags"


class Stack(compose.Distributed):
    """The compose stack with bench/dags as its DAGs folder and a variant's settings (one more compose file)."""

    def use(self, name: str) -> None:
        settings = {"AIRFLOW__CORE__DAGS_FOLDER": BENCH_DAGS, **VARIANTS[name][0]}
        override = self.state / "bench-override.yml"
        override.write_text(json.dumps({  # JSON is YAML: compose 1.29 reads it as an override file
            "version": "3.8",
            "services": {s: {"environment": settings, "volumes": [f"{REPO / 'bench' / 'dags'}:{BENCH_DAGS}:ro"]}
                         for s in SERVICES},
        }, indent=1))  # fmt: skip
        self.overrides = (override,)

    def apply(self) -> None:
        """`up -d` with the current override: services whose environment changed are recreated; then ready."""
        self.compose("up", "-d", "--remove-orphans", timeout=900)
        self.wait_ready()

    def cpu_ns(self, services: tuple[str, ...]) -> int:
        total = 0
        for service in services:
            stats = self.container(service).stats(stream=False)
            total += int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
        return total

    def transactions(self) -> int:
        """Postgres' committed + rolled back transactions in the airflow database so far."""
        sql = "select xact_commit + xact_rollback from pg_stat_database where datname = 'airflow'"
        done = self.compose("exec", "-T", "postgres", "psql", "-U", "airflow", "-d", "airflow", "-tAc", sql)
        return int(done.stdout.strip())

    def logs_dir(self) -> Path:
        client = self.client()
        try:
            return Path(client.volumes.get(f"{self.project}_airflow-logs").attrs["Mountpoint"])
        finally:
            client.close()

    def access_log(self) -> str:
        return self.container("airflow-api-server").logs().decode(errors="replace")


def block(stack: Stack, api_factory: Any, name: str, runs: int) -> dict[str, Any]:
    stack.use(name)
    stack.apply()
    api = api_factory()
    api.wait_for_dags([DAG_ID], timeout=300)
    api.unpause(DAG_ID)
    warm = api.wait(DAG_ID, api.trigger(DAG_ID, {}), timeout=600, interval=0.5)  # workers warm, DAG parsed
    if str(getattr(warm.state, "value", warm.state)) != "success":
        raise RuntimeError(f"{name}: warm-up run {warm.state}")
    every = ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer", "postgres",
             "redis", *compose.WORKERS)  # fmt: skip
    cpu_before = stack.cpu_ns(every)
    profiles = []
    for _ in range(runs):
        started = time.perf_counter()
        run_id = api.trigger(DAG_ID, {})
        api.wait(DAG_ID, run_id, timeout=600, interval=0.25)
        p = profile(api, run_id, time.perf_counter() - started, stack.logs_dir(), stack.access_log())
        p["load1"] = loadavg()[0]
        if p["state"] != "success":
            raise RuntimeError(f"{name}: run {run_id} {p['state']}")
        profiles.append(p)
    cpu_per_run = (stack.cpu_ns(every) - cpu_before) / 1e9 / runs
    time.sleep(5)
    before = stack.cpu_ns(("airflow-scheduler",)), stack.cpu_ns(("postgres",)), stack.transactions()
    time.sleep(IDLE_WINDOW_S)
    after = stack.cpu_ns(("airflow-scheduler",)), stack.cpu_ns(("postgres",)), stack.transactions()
    api.close()
    return {
        "profiles": profiles,
        "cpu_per_run_s": cpu_per_run,
        "scheduler_idle_pct": 100 * (after[0] - before[0]) / 1e9 / IDLE_WINDOW_S,
        "postgres_idle_pct": 100 * (after[1] - before[1]) / 1e9 / IDLE_WINDOW_S,
        "xact_per_s_idle": (after[2] - before[2]) / IDLE_WINDOW_S,
    }


def main(rounds: int, runs: int) -> Report:
    report = Report(TOPIC, "Orchestration on the compose stack (CeleryExecutor, Postgres): Airflow's own cost per run")
    names = list(VARIANTS)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    state = STATE / TOPIC
    stack = Stack(state, compose.Ports.free(), project="modelship-bench")
    stack.use("shipped")
    started = time.monotonic()
    stack.up()
    print(f"compose stack up in {time.monotonic() - started:.0f} s", flush=True)

    def api_factory() -> AirflowAPI:
        return AirflowAPI.login(f"http://127.0.0.1:{stack.ports.api}", compose.ADMIN_USER,
                                stack.secrets()["ADMIN_PASSWORD"], patience=120)  # fmt: skip

    try:
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                out = block(stack, api_factory, name, runs)
                results[name].append(out)
                gaps = [p["outside"] for p in out["profiles"]]
                print(f"round {round_ + 1}/{rounds} {name}: outside the tasks {median(gaps):.2f} s "
                      f"({min(gaps):.2f}-{max(gaps):.2f}); idle: scheduler {out['scheduler_idle_pct']:.1f} %, "
                      f"postgres {out['postgres_idle_pct']:.1f} %, {out['xact_per_s_idle']:.0f} xact/s "
                      f"(load {loadavg()})", flush=True)  # fmt: skip
    finally:
        stack.down(volumes=True)

    def series(name: str, key: str) -> list[float]:
        return [p[key] for out in results[name] for p in out["profiles"]]

    for name in names[1:]:
        report.add(f"compose stack, time outside the task bodies: {name}", VARIANTS["defaults"][1],
                   series("defaults", "outside"), VARIANTS[name][1], series(name, "outside"), "s")  # fmt: skip
    report.add("compose stack, ci_shape run (server clocks)", VARIANTS["defaults"][1],
               series("defaults", "server_wall"), VARIANTS["shipped"][1], series("shipped", "server_wall"),
               "s")  # fmt: skip
    report.table("Where a run's time goes on the compose stack: median seconds per run, summed over its 8 tasks", [
        {"phase": label, **{n: round(median([p["phases"][key] for out in results[n] for p in out["profiles"]]), 3)
                            for n in names}}
        for key, label in PHASES
    ] + [
        {"phase": "outside the task bodies (" + " + ".join(OUTSIDE) + ")",
         **{n: round(median(series(n, "outside")), 3) for n in names}},
        {"phase": "Σ task durations", **{n: round(median(series(n, "tasks_sum")), 3) for n in names}},
        {"phase": "Execution API calls per task", **{n: round(median(series(n, "api_calls")), 1) for n in names}},
    ])  # fmt: skip
    report.table("Costs of each variant on the compose stack (median over its blocks)", [
        {"variant": name, "settings": json.dumps(VARIANTS[name][0]) if VARIANTS[name][0] else "(as shipped)",
         "outside the tasks s (min–max)": f"{median(series(name, 'outside')):.2f} "
                                          f"({min(series(name, 'outside')):.2f}–{max(series(name, 'outside')):.2f})",
         "scheduler CPU idle, % of a core": round(median([o["scheduler_idle_pct"] for o in results[name]]), 1),
         "Postgres CPU idle, % of a core": round(median([o["postgres_idle_pct"] for o in results[name]]), 1),
         "Postgres transactions/s idle": round(median([o["xact_per_s_idle"] for o in results[name]]), 1),
         "CPU s per run, all containers": round(median([o["cpu_per_run_s"] for o in results[name]]), 2)}
        for name in names
    ])  # fmt: skip
    report.note(f"{rounds} round(s), {runs} timed runs per variant and round after one warm-up run, then "
                f"{IDLE_WINDOW_S:.0f} s idle for the CPU and transaction readings; a variant is applied with "
                "`docker-compose up -d` (the Airflow services restart). 2 workers × 2 slots.")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run_cli(lambda: main(args.rounds, args.runs))
