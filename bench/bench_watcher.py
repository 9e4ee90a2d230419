"""Commit watcher: a commit pushed → its ci run running, on the local stack. Target: median <= 5 s.

The source is a bare repository on this machine (as `make up`'s default, this repository, is a local path),
watched by the ci DAG's `commits` watcher in a real triggerer; scheduler, dag-processor and api-server as
`make up` runs them. Each push is one more commit pushed from a clone; timed from `git push` returning to the
ci run that commit started: created (queued), running, and its first task started (server clocks, the same
machine's). No model is promoted, so each ci run ends at once (resolve: nothing to build) and costs nothing.

Baseline: main before issue 19: the watcher asked the repository every 30 s (git ls-remote), with Airflow's
default scheduler settings. Variants, each on its own fresh components, interleaved in rounds:
  before     MODELSHIP_SOURCE_POLL=30, MODELSHIP_SOURCE_LOCAL_CHECK=0, Airflow's defaults
  watcher    the new watcher (stat() of the ref every second), Airflow's defaults
  shipped    the new watcher and devstack.stack.airflow_settings as shipped

    python -m bench.bench_watcher [--rounds 2] [--pushes 6]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import STATE
from bench.bench_orchestration import AIRFLOW_DEFAULTS
from bench.dag_runs import AirflowServer
from bench.logs import run_cli
from bench.report import Report, loadavg, median, percentile

TOPIC = "watcher"
TARGET = 5.0
BEFORE_WATCHER = {"MODELSHIP_SOURCE_POLL": "30", "MODELSHIP_SOURCE_LOCAL_CHECK": "0"}
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str], str]] = {
    # name: (modelship settings, Airflow settings over the shipped ones, label)
    "before": (BEFORE_WATCHER, AIRFLOW_DEFAULTS, "ls-remote every 30 s, Airflow's defaults (main before issue 19)"),
    "watcher": ({}, AIRFLOW_DEFAULTS, "stat() of the ref every 1 s, Airflow's defaults"),
    "shipped": ({}, {}, "stat() of the ref every 1 s, airflow_settings as shipped"),
}


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@localhost", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


class Remote:
    """A bare repository on this machine and a clone that pushes one commit to its `main` at a time."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "source.git", root / "work"
        root.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        _git("clone", "-q", str(self.bare), str(self.work), cwd=root)
        _git("checkout", "-q", "-b", "main", cwd=self.work)
        self.pushes = 0
        self.push()

    def push(self) -> tuple[str, float]:
        """One more commit on main, pushed; (its sha, the wall clock when `git push` returned)."""
        self.pushes += 1
        (self.work / "change.txt").write_text(f"{self.pushes} {time.time_ns()}\n")
        _git("add", "change.txt", cwd=self.work)
        _git("commit", "-q", "-m", f"bench: push {self.pushes}", cwd=self.work)
        _git("push", "-q", "origin", "main", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work), time.time()


def _ts(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float("nan")


def _next_run(server: AirflowServer, known: set[str], timeout: float = 120) -> Any:
    """The next ci run not in `known` (pushes are one at a time: the watcher's run for the last push), ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run for run in server.api.runs("ci") if run.dag_run_id not in known]
        if new:
            run_id = new[-1].dag_run_id  # runs() lists the newest first
            known.add(run_id)
            return server.api.wait("ci", run_id, timeout=timeout, interval=0.5)
        time.sleep(0.2)
    raise RuntimeError(f"no new ci run within {timeout:.0f}s")


def block(root: Path, name: str, pushes: int) -> list[dict[str, Any]]:
    modelship, airflow, _ = VARIANTS[name]
    home = root / f"airflow-{name}"
    remote = Remote(root / f"source-{name}-{time.time_ns()}")
    env = {
        "MODELSHIP_STATE": str(root / f"state-{name}"),
        "MODELSHIP_SOURCE_REPO": str(remote.bare),
        "MODELSHIP_SOURCE_BRANCH": "main",
        **modelship,
    }
    rows = []
    with AirflowServer(home, env, airflow, triggerer=True) as server:
        server.wait_for_dag("ci")
        known: set[str] = set()
        _next_run(server, known, timeout=240)  # the watcher's first run: the head when it started
        for i in range(pushes):
            time.sleep(random.uniform(1, 4))  # pushes land at any point of a poll interval
            _, pushed_at = remote.push()
            run = _next_run(server, known)
            tasks = server.api.tasks("ci", run.dag_run_id)
            first = min((_ts(t.start_date) for t in tasks if t.start_date), default=float("nan"))
            rows.append({
                "variant": name, "push": i + 1,
                "→ run created s": round(_ts(run.queued_at) - pushed_at, 2),
                "→ run running s": round(_ts(run.start_date) - pushed_at, 2),
                "→ first task started s": round(first - pushed_at, 2),
                "load1": loadavg()[0],
            })  # fmt: skip
    return rows


def main(rounds: int, pushes: int) -> Report:
    report = Report(TOPIC, "Commit watcher: a commit pushed → its ci run running")
    root = STATE / TOPIC
    shutil.rmtree(root, ignore_errors=True)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in VARIANTS}
    names = list(VARIANTS)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            rows = block(root, name, pushes)
            results[name] += rows
            running = [r["→ run running s"] for r in rows]
            print(f"round {round_ + 1}/{rounds} {name}: pushed → running median {median(running):.2f} s "
                  f"({min(running):.2f}-{max(running):.2f})  (load {loadavg()})", flush=True)  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)

    def series(name: str, key: str = "→ run running s") -> list[float]:
        return [r[key] for r in results[name]]

    for name in ("watcher", "shipped"):
        report.add(f"commit pushed → ci running: {name}", VARIANTS["before"][2], series("before"), VARIANTS[name][2],
                   series(name), "s")  # fmt: skip
    shipped = series("shipped")
    report.note(f"target: median <= {TARGET:.0f} s from push to a running ci run, as shipped: {median(shipped):.2f} s "
                f"({'met' if median(shipped) <= TARGET else 'MISSED'}); p90 {percentile(shipped, 90):.2f} s, "
                f"max {max(shipped):.2f} s over {len(shipped)} pushes")  # fmt: skip
    report.table("Median seconds from `git push` returning", [
        {"variant": name, "settings": VARIANTS[name][2],
         **{key: round(median(series(name, key)), 2) for key in ("→ run created s", "→ run running s",
                                                                  "→ first task started s")},
         "running: min–max s": f"{min(series(name)):.2f}–{max(series(name)):.2f}", "pushes": len(results[name])}
        for name in names
    ])  # fmt: skip
    report.table("Every push", [row for name in names for row in results[name]])
    report.note(f"{rounds} round(s) of {pushes} pushes per variant, each variant on freshly started components; "
                "pushes 1-4 s apart after the previous run ended, so they land anywhere in a poll interval. An "
                "ls-remote of a local repository costs a git process per ask; the stat() check none.")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=6)
    args = parser.parse_args()
    run_cli(lambda: main(args.rounds, args.pushes))
