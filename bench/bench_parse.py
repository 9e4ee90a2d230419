"""DAG parse time: each file in dags/ over a bare `import airflow.sdk`. Target: <= 0.2 s over it, each.

Every run is a fresh interpreter (the dag-processor parses in fresh processes too): it times
`import airflow.sdk` (the baseline), then executing the DAG file (the result is both together). A
second interpreter with `-X importtime` shows which modules the file pulls in beyond airflow.sdk: the
profile, whether or not the target is met.

Both clocks are recorded: wall time, and the interpreter's CPU time (user + system). Importing is
single-threaded and reads from the page cache, so on an idle machine the two agree; on a shared, loaded
machine wall time mostly measures the wait for a core. The verdict uses CPU time, and says so.

    python -m bench.bench_parse [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench import REPO, STATE
from bench.dag_runs import airflow_env
from bench.logs import run_cli
from bench.report import Report, median

TOPIC = "parse"
TARGET_S = 0.2
MARKER = "BENCH-SDK-IMPORTED"

_PROBE = f"""
import importlib.util, json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import airflow.sdk
t1, c1 = time.perf_counter(), time.process_time()
print("{MARKER}", file=sys.stderr, flush=True)
spec = importlib.util.spec_from_file_location("bench_dag_file", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({{"sdk": t1 - t0, "file": t2 - t1, "sdk_cpu": c1 - c0, "file_cpu": c2 - c1}}))
"""


def _env() -> dict[str, str]:
    home = STATE / TOPIC / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **airflow_env(home)}


def probe(path: Path, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def heavy_imports(path: Path, env: dict[str, str], top: int = 6) -> list[dict[str, object]]:
    """The modules the DAG file imports beyond airflow.sdk, by cumulative import time (-X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", _PROBE, str(path)], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    lines = done.stderr.splitlines()
    after = lines[lines.index(MARKER) + 1 :] if MARKER in lines else []
    rows = []
    for line in after:
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if not cumulative.isdigit():
            continue
        depth = (len(line.split("|")[2]) - len(line.split("|")[2].lstrip())) // 2
        rows.append({"module": name.strip(), "cumulative ms": round(int(cumulative) / 1000, 1), "depth": depth})
    shallow = min((r["depth"] for r in rows), default=0)
    outer = [r for r in rows if r["depth"] <= shallow + 1]
    return sorted(outer, key=lambda r: -r["cumulative ms"])[:top]


def main(runs: int) -> Report:
    report = Report(TOPIC, "DAG parse time over a bare `import airflow.sdk`")
    env = _env()
    files = sorted((REPO / "dags").glob("*.py"))
    samples: dict[Path, list[dict[str, float]]] = {f: [] for f in files}
    probe(files[0], env)  # first interpreter start warms the page cache and writes bytecode
    for _ in range(runs):
        for path in files:  # interleaved, so drift in load spreads over every file
            samples[path].append(probe(path, env))
    for path in files:
        runs_ = samples[path]
        sdk = [s["sdk_cpu"] for s in runs_]
        both = [s["sdk_cpu"] + s["file_cpu"] for s in runs_]
        extra = median([s["file_cpu"] for s in runs_])
        m = report.add(f"dags/{path.name} (CPU s)", "import airflow.sdk", sdk,
                       f"import airflow.sdk + dags/{path.name}", both, "s",
                       target=f"file <= {TARGET_S} s over the baseline", met=extra <= TARGET_S)  # fmt: skip
        wall = median([s["file"] for s in runs_])
        verdict = "met" if m.met else f"MISSED by {extra - TARGET_S:.3f} s"
        report.note(f"dags/{path.name}: {extra:.3f} CPU s ({wall:.3f} wall s) over the bare import, target "
                    f"{TARGET_S} s: {verdict}")  # fmt: skip
        report.table(f"dags/{path.name}: imports beyond airflow.sdk, by cumulative time (-X importtime)",
                     heavy_imports(path, env))  # fmt: skip
    for clock, key in (("CPU", "file_cpu"), ("wall", "file")):
        report.table(f"{clock} seconds over the bare import, every run", [
            {"file": f"dags/{p.name}", **{f"run {i + 1}": round(s[key], 3) for i, s in enumerate(samples[p])},
             "median": round(median([s[key] for s in samples[p]]), 3)}
            for p in files
        ])  # fmt: skip
    report.table("import airflow.sdk alone, median seconds", [
        {"clock": clock, "median s": round(median([s[key] for p in files for s in samples[p]]), 3)}
        for clock, key in (("CPU", "sdk_cpu"), ("wall", "sdk"))
    ])  # fmt: skip
    report.note(f"{runs} fresh interpreters per file, files interleaved; each run times `import airflow.sdk`, "
                "then executing the file with importlib (what the dag-processor's import of a DAG file costs).")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    run_cli(lambda: main(args.runs))
