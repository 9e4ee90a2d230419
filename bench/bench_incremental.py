"""Incremental CI: a code-only change ÷ a cold build (target <= 0.25), and what the warm run moved:
bytes of model downloaded (model store stats) and the model layer pushed (the push stream says "Layer
already exists" or "Pushed"): target 0 and 0. And a model-only change: what its push sends (target: the
model layer alone, besides the image's config and manifest, which every push sends).

Each pair starts from nothing modelship keeps: a fresh Docker engine (only the base image), an empty
registry, a fresh Azurite with the model published, an empty model cache. The cold run is the ci DAG
(dag.test()) for one commit; the warm run is the ci DAG for the next commit, which changes app code only
(a comment in app/classifier/routes.py); then a model-only run: model v2 is published and promoted and the
ci DAG builds the warm run's commit again with it (a fresh checkout, so the code's files have new times).
Caches keyed by requirements (the wheelhouse, the app's test venv) are kept in all: rebuilding them measures
PyPI, not modelship.

    python -m bench.bench_incremental [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import subprocess
from typing import Any

from bench import REPOSITORY, STATE
from bench.artifacts import SourceRepo, publish_and_promote, train
from bench.components import BenchStack, app_tests_argv
from bench.dag_runs import run_dag, use_airflow_home
from bench.logs import log_file, output_to, run_cli
from bench.recorders import PushRecorder, StoreRecorder, model_layer
from bench.report import Report, loadavg, median

TOPIC = "incremental"
TARGET = "<= 0.25"


def one_pair(i: int, logs: Any) -> dict[str, Any]:
    from modelship.ci import image_tag

    with BenchStack(f"{TOPIC}-{i}") as stack:
        env = stack.env()
        source = SourceRepo(stack.root / "source")
        env["MODELSHIP_SOURCE_REPO"] = str(source.path)
        stack.apply(env)
        with output_to(logs):
            publish_and_promote(train(stack.root, "v1"))
            runs: dict[str, Any] = {}
            for kind, model in (("cold", "v1"), ("warm", "v1"), ("model", "v2")):
                if kind == "model":
                    publish_and_promote(train(stack.root, "v2"))
                    commit = source.head()  # the warm run's commit, with the new model
                else:
                    commit = source.code_change()
                pushes, stores = PushRecorder(), StoreRecorder()
                with pushes.installed(), stores.installed():
                    timing = run_dag("ci", {"commit": commit})
                if timing.state != "success":
                    raise RuntimeError(f"{kind} ci run failed: {timing.tasks}; see {logs}")
                api = stack.docker_api()
                layer = model_layer(api, f"{REPOSITORY}:{image_tag(commit, model)}")
                pushed = pushes.pushes[-1]
                model_push = pushed.get(layer or "", {})
                runs[kind] = {
                    "seconds": timing.seconds,
                    "tasks": {k: v["seconds"] for k, v in timing.tasks.items()},
                    "model_bytes_downloaded": stores.total("bytes_downloaded"),
                    "model_cache_hits": stores.total("cache_hits"),
                    "model_layer": layer,
                    "model_layer_status": (model_push.get("statuses") or ["?"])[-1],
                    "model_layer_bytes_pushed": model_push.get("bytes", 0)
                    if "Pushed" in model_push.get("statuses", [])
                    else 0,
                    "layers_pushed": sum("Pushed" in v["statuses"] for v in pushed.values()),
                    "layers_existing": sum("Layer already exists" in v["statuses"] for v in pushed.values()),
                    "bytes_pushed": sum(v["bytes"] for v in pushed.values() if "Pushed" in v["statuses"]),
                    "other_layers_pushed": sorted(k for k, v in pushed.items() if "Pushed" in v["statuses"]
                                                  and k != layer),  # fmt: skip
                }
    return runs


def test_durations(logs: Any) -> list[dict[str, Any]]:
    """The slowest of the app's own tests (pytest --durations), from a clean clone: the test step's profile."""

    with BenchStack(f"{TOPIC}-durations") as stack:
        stack.apply(stack.env())
        source = SourceRepo(stack.root / "source")
        argv = app_tests_argv(stack.docker.url, source.path, stack.cache, "--durations=8")
        done = subprocess.run(argv, capture_output=True, text=True)
    rows = []
    for line in done.stdout.splitlines():
        match = re.match(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", line)
        if match:
            rows.append({"seconds": float(match.group(1)), "phase": match.group(2), "test": match.group(3)})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    rows.append({"seconds": "", "phase": "", "test": f"whole session: {summary}"})
    return rows


def main(runs: int) -> Report:
    report = Report(TOPIC, "Incremental CI: a code-only change ÷ a cold build")
    logs = log_file(TOPIC)
    logs.unlink(missing_ok=True)
    with output_to(logs):
        use_airflow_home(STATE / f"{TOPIC}-airflow")
    pairs = []
    for i in range(runs):
        pair = one_pair(i, logs)
        pairs.append(pair)
        print(f"pair {i + 1}/{runs}: cold {pair['cold']['seconds']:.0f} s, warm {pair['warm']['seconds']:.0f} s, "
              f"warm downloaded {pair['warm']['model_bytes_downloaded']} model bytes, model layer "
              f"{pair['warm']['model_layer_status']!r} (load {loadavg()})", flush=True)  # fmt: skip

    report.add("code-only change ÷ cold build", "cold ci run", [p["cold"]["seconds"] for p in pairs],
               "warm ci run (code-only change)", [p["warm"]["seconds"] for p in pairs], "s", target=TARGET)  # fmt: skip
    # The app's tests run in full in both (as they must) and their duration swings with the machine's load;
    # without them, what is left is what the caches are for: model fetch, build, push.
    report.add("code-only change ÷ cold build, without the test task", "cold run − its test task",
               [p["cold"]["seconds"] - (p["cold"]["tasks"]["test"] or 0) for p in pairs],
               "warm run − its test task", [p["warm"]["seconds"] - (p["warm"]["tasks"]["test"] or 0) for p in pairs],
               "s", target=TARGET)  # fmt: skip
    warm_bytes = [p["warm"]["model_bytes_downloaded"] for p in pairs]
    warm_layer = [p["warm"]["model_layer_bytes_pushed"] for p in pairs]
    statuses = sorted({p["warm"]["model_layer_status"] for p in pairs})
    bytes_met = "met" if not any(warm_bytes) else "MISSED"
    layer_met = "met" if not any(warm_layer) and statuses == ["Layer already exists"] else "MISSED"
    report.note(f"warm runs: model bytes downloaded {warm_bytes} (target 0: {bytes_met}); model layer bytes "
                f"pushed {warm_layer}, push stream says {statuses} (target 0: {layer_met})")  # fmt: skip
    # A model-only change: the model layer is all that is sent (the code layer after it is rebuilt into the bytes
    # the registry has); the baseline is that same model layer's size, so the ratio is 1 when nothing else went.
    model_runs = [p["model"] for p in pairs]
    report.add("model-only change: layer bytes pushed ÷ the model layer's bytes", "the new model layer",
               [r["model_layer_bytes_pushed"] for r in model_runs], "every layer the push sent",
               [r["bytes_pushed"] for r in model_runs], "bytes", target="<= 1.0")  # fmt: skip
    one_layer = all(r["layers_pushed"] == 1 and r["model_layer_status"] == "Pushed" and not r["other_layers_pushed"]
                    for r in model_runs)  # fmt: skip
    report.note(f"model-only runs: layers pushed {[r['layers_pushed'] for r in model_runs]}, the model layer "
                f"{sorted({r['model_layer_status'] for r in model_runs})}, other layers sent "
                f"{[r['other_layers_pushed'] for r in model_runs]} (target: the model layer only, plus the config "
                f"blob and the manifest every push sends: {'met' if one_layer else 'MISSED'})")  # fmt: skip
    cold_bytes = [p["cold"]["model_bytes_downloaded"] for p in pairs]
    cold_status = sorted({p["cold"]["model_layer_status"] for p in pairs})
    report.note(f"cold runs for comparison: model bytes downloaded {cold_bytes}, model layer {cold_status}, "
                f"bytes pushed {[p['cold']['bytes_pushed'] for p in pairs]}")  # fmt: skip
    tasks = sorted({t for p in pairs for kind in ("cold", "warm") for t in p[kind]["tasks"]})
    report.table("Median seconds per task, cold vs warm (the profile)", [
        {"task": t,
         "cold s": round(median([p["cold"]["tasks"][t] or 0 for p in pairs]), 2),
         "warm s": round(median([p["warm"]["tasks"][t] or 0 for p in pairs]), 2)}
        for t in tasks
    ] + [{"task": "whole run (wall)", "cold s": round(median([p["cold"]["seconds"] for p in pairs]), 2),
          "warm s": round(median([p["warm"]["seconds"] for p in pairs]), 2)}])  # fmt: skip
    report.table("Every pair", [
        {"pair": i + 1, "run": kind, "seconds": round(p[kind]["seconds"], 1),
         "model bytes downloaded": p[kind]["model_bytes_downloaded"], "model layer": p[kind]["model_layer"],
         "model layer push": p[kind]["model_layer_status"], "layers pushed": p[kind]["layers_pushed"],
         "layers already there": p[kind]["layers_existing"],
         "layer bytes pushed (push progress totals)": p[kind]["bytes_pushed"]}
        for i, p in enumerate(pairs) for kind in ("cold", "warm", "model")
    ])  # fmt: skip
    with output_to(logs):
        durations = test_durations(logs)
    report.table("The test task's profile: slowest tests of tests/app (pytest --durations=8)", durations)
    pair_min = median([p["cold"]["seconds"] + p["warm"]["seconds"] for p in pairs]) / 60
    report.note(f"{runs} cold/warm/model-only triples, each on a fresh Docker engine, registry and Azurite; a "
                f"cold/warm pair took {pair_min:.1f} min (median) plus the stack's start.")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run_cli(lambda: main(args.runs))
