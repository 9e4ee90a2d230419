"""Release: trigger → verified on the docker target, the requests that fail during the swap under a steady
load (target 0), and the latency during the swap against the steady state.

Two images of the same commit, one per model version (v1, v2), built and pushed with modelship.images.
v1 is released first (not timed under load). Then, under a constant load of POST /score (50 a second,
one held-out digit each, a new connection each), the release DAG (dag.test()) alternates the serving image
between v2 and v1: each run is timed from the trigger until the run ends (the deploy task has verified
/version on the serving port), every request that failed while it ran is counted, and the p99 latency of
the requests sent while it ran is set against the p99 of the 3 s of steady load before it.

Baseline: the same swap by hand with the Docker API and no checks: stop the old container (same 10 s
grace), start the new image on the same port, poll /readyz until 200 — what a one-line deploy script
does. Same load, same counting.

    python -m bench.bench_release [--runs 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from typing import Any

from bench.artifacts import SourceRepo, build_and_push, train
from bench.components import BenchStack
from bench.dag_runs import run_dag, use_airflow_home
from bench.load import ConstantLoad, sample_request, wait_http
from bench.logs import log_file, output_to, run_cli
from bench.report import Report, loadavg
from modelship import net

TOPIC = "release"
RATE = 50.0
STEADY = 3.0  # seconds of steady load before each release: the latency it is compared with


def serving_model(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/version")
    return json.loads(conn.getresponse().read())["model"]["version"]


def window(load: ConstantLoad, start: float, end: float) -> dict[str, Any]:
    failed = load.failures(start, end)
    swap, steady = load.summary(start, end), load.summary(start - STEADY, start)
    return {
        "sent": swap["sent"],
        "failed": len(failed),
        "outage_s": (failed[-1].started - failed[0].started + 1 / RATE) if failed else 0.0,
        "kinds": swap["errors"],
        "p99 steady ms": steady["p99_ms"],
        "p99 swap ms": swap["p99_ms"],
    }


def manual_start(api: Any, image: str, port: int) -> str:
    host_config = api.create_host_config(
        network_mode="host", read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"}, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], mem_limit="1g",
    )  # fmt: skip
    container = api.create_container(image, environment={"APP_BIND": f"127.0.0.1:{port}"},
                                     host_config=host_config)["Id"]  # fmt: skip
    api.start(container)
    return container


def main(runs: int) -> Report:
    report = Report(TOPIC, "Release on the docker target: trigger → verified, failures during the swap")
    logs = log_file(TOPIC)
    logs.unlink(missing_ok=True)
    with BenchStack(TOPIC) as stack:
        env = stack.env()
        stack.apply(env)
        port = int(env["MODELSHIP_DOCKER_DEPLOY_PORT"])
        with output_to(logs):
            use_airflow_home(stack.root / "airflow")
            source = SourceRepo(stack.root / "source")
            built = [
                build_and_push(stack, source, source.head(), train(stack.root, v), f"release-{v}")
                for v in ("v1", "v2")
            ]
            first = run_dag("release", {"target": "docker", "image": built[0]["ref"]})
        if first.state != "success" or serving_model(port) != "v1":
            raise RuntimeError(f"first release failed: {first.tasks}; see {logs}")
        report.note(f"first release (nothing serving before): {first.seconds:.1f} s")
        body = sample_request()

        dag_rows: list[dict[str, Any]] = []
        with ConstantLoad(port, body, rate=RATE) as load:
            time.sleep(STEADY)
            for i in range(runs):
                image = built[(i + 1) % 2]
                start = time.monotonic()
                with output_to(logs):
                    timing = run_dag("release", {"target": "docker", "image": image["ref"]})
                end = time.monotonic()
                now = serving_model(port)
                if timing.state != "success" or now != image["model_version"]:
                    raise RuntimeError(f"release {i + 1} failed ({timing.state}, serving {now}); see {logs}")
                row = {"run": i + 1, "to": image["model_version"], "seconds": round(timing.seconds, 2),
                       "deploy task s": round(timing.tasks["deploy"]["seconds"], 2),
                       "select_image s": round(timing.tasks["select_image"]["seconds"], 2),
                       **window(load, start, end), "load1": loadavg()[0]}  # fmt: skip
                dag_rows.append(row)
                print(f"release {i + 1}/{runs} → {row['to']}: {row['seconds']} s, {row['failed']}/{row['sent']} "
                      f"requests failed ({row['kinds']}), p99 {row['p99 swap ms']} ms (steady "
                      f"{row['p99 steady ms']} ms)", flush=True)  # fmt: skip
                time.sleep(STEADY)

        api = stack.docker_api()
        for container in api.containers(all=True, filters={"label": "io.modelship.role"}):
            api.remove_container(container["Id"], force=True)

        manual_port = net.free_port()
        current = manual_start(api, built[0]["image_id"], manual_port)
        wait_http(manual_port)
        manual_rows: list[dict[str, Any]] = []
        with ConstantLoad(manual_port, body, rate=RATE) as load:
            time.sleep(STEADY)
            for i in range(runs):
                image = built[(i + 1) % 2]
                start = time.monotonic()
                api.stop(current, timeout=10)
                api.remove_container(current, force=True)
                current = manual_start(api, image["image_id"], manual_port)
                wait_http(manual_port, timeout=120)
                end = time.monotonic()
                manual_rows.append({"run": i + 1, "to": image["model_version"], "seconds": round(end - start, 2),
                                    **window(load, start, end), "load1": loadavg()[0]})  # fmt: skip
                print(f"manual swap {i + 1}/{runs}: {manual_rows[-1]['seconds']} s, {manual_rows[-1]['failed']} "
                      "requests failed", flush=True)  # fmt: skip
                time.sleep(STEADY)
        api.remove_container(current, force=True)

    report.add("release DAG, trigger → verified (s)", "manual stop + run + /readyz",
               [r["seconds"] for r in manual_rows],
               "release DAG (dag.test())", [r["seconds"] for r in dag_rows], "s")  # fmt: skip
    failed = [r["failed"] for r in dag_rows]
    report.add(f"requests failed per release ({RATE:.0f} req/s)", "manual stop + run",
               [r["failed"] for r in manual_rows], "release DAG", failed, "requests", target="0 per release",
               met=not any(failed))  # fmt: skip
    report.add("p99 latency during the release", "steady load before it", [r["p99 steady ms"] for r in dag_rows],
               "during the release", [r["p99 swap ms"] for r in dag_rows], "ms")  # fmt: skip
    report.add("outage per swap (first → last failed request)", "manual stop + run",
               [r["outage_s"] for r in manual_rows], "release DAG", [r["outage_s"] for r in dag_rows], "s")  # fmt: skip
    report.table("Release DAG runs under load", dag_rows)
    report.table("Manual swaps under load (baseline)", manual_rows)
    report.note(f"{runs} releases (v1 ↔ v2) under an open-loop load of {RATE:.0f} POST /score a second, each on a "
                "new connection. The docker target starts the new container beside the serving one on the same "
                "port (SO_REUSEPORT), proves it on a private port, then stops the old one gracefully "
                "(modelship/deploy/docker.py); the manual baseline stops, then starts, and drops what arrives "
                "in between.")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run_cli(lambda: main(args.runs))
