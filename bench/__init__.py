"""Benchmarks: each prints its named baseline, its result and the ratio (`python -m bench.<module>`).

What they share, one module each: report (the numbers, the Report a benchmark saves), logs (where a
benchmark's output goes, its entry point), components (Docker engine, registry, Azurite), dag_runs (the DAGs
through dag.test() or real Airflow components), artifacts (source commits, models, the app image), recorders
(what a DAG run pushed and fetched), load (requests against the served app).
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MODELSHIP_BENCH_STATE", REPO / ".state" / "bench"))  # stacks, logs, results
MODEL_NAME = "digits"
REPOSITORY = "modelship/digits-app"
