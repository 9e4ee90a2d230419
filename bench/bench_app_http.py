"""Serving throughput of the app under real gunicorn on this machine, without Docker: HTTP /score at 16
clients (wrk) against the app's own in-process pipeline, measured in the same run.

bench_serving.py measures the built image in a Docker engine; this is the light version of its headline
ratio for working on the app itself (docs/scoring-api.md, "Throughput"):

- "pipeline": base64 decode + image_to_features + predict + top 3 + json.dumps in a loop, 2 processes
  (both cores): exactly bench_serving's "app pipeline" baseline (its _rate_worker);
- "HTTP": `gunicorn -c app/gunicorn.conf.py` (2 workers, the shipped defaults) on 127.0.0.1, and
  wrk with 16 connections POSTing the same one-image body (bench's sample_request) for `--seconds`. The
  server's stdout (the access log) is a pipe read by a separate process that does what a container
  runtime's json-file logging does (Docker's default, and what bench_serving measures): one JSON record
  per line, appended to a file (`--log-reader json`, the default; `cat` just copies).

Rounds alternate the order of the two, and each variant's gunicorn is started fresh and warmed up. wrk
shares the 2 cores with the server; its CPU time is reported. Variants (--variant NAME=ENV,...) run the
same HTTP measurement with extra environment, e.g. `--variant nolog=GUNICORN_CMD_ARGS=--access-logfile=/dev/null`.

    python -m bench.bench_app_http [--runs 5] [--seconds 5] [--variant ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import REPO
from bench.bench_serving import inprocess_rate
from bench.load import sample_request, wait_http, wrk
from bench.report import median
from modelship import net

APP = REPO / "app"
CLIENTS = 16
# The container runtime's side of stdout, in Python: read the pipe, write one JSON record per line.
JSON_READER = """
import json, os, sys, time
out, rest = open(sys.argv[1], "w"), b""
while chunk := os.read(0, 65536):
    *lines, rest = (rest + chunk).split(b"\\n")
    out.write("".join(json.dumps({"log": line.decode() + "\\n", "stream": "stdout", "time": time.time()}) + "\\n"
                      for line in lines))
    out.flush()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (gunicorn's master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0.0
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Server:
    """gunicorn as the image runs it, stdout piped to a reader process (like a container's log pipe)."""

    def __init__(self, model: Path, root: Path, env: dict[str, str], log_reader: str) -> None:
        self.port = net.free_port()
        self.log = root / f"access-{self.port}.log"
        reader = ["cat"] if log_reader == "cat" else [sys.executable, "-c", JSON_READER, "/dev/stdout"]
        self.reader = subprocess.Popen(reader, stdin=subprocess.PIPE, stdout=self.log.open("wb"))
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAX_", "APP_", "PROMETHEUS"))}
        environ.update(MODEL_DIR=str(model), APP_BIND=f"127.0.0.1:{self.port}", TMPDIR=str(root), **env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=APP, env=environ,
            stdout=self.reader.stdin, stderr=(root / f"gunicorn-{self.port}.err").open("wb"),
        )  # fmt: skip
        self.reader.stdin.close()  # gunicorn holds the write end now
        wait_http(self.port, "/readyz", timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.reader.wait(timeout=60)


def http_rate(
    model: Path, root: Path, script: Path, env: dict[str, str], seconds: float, log_reader: str
) -> dict[str, float]:
    server = Server(model, root, env, log_reader)
    try:
        warm = wrk(server.port, script, CLIENTS, 2)  # warm-up: both workers booted, imports and caches warm
        cpu, reader = cpu_seconds(server.process.pid), cpu_seconds(server.reader.pid)
        sample = wrk(server.port, script, CLIENTS, seconds)
        requests = max(1, sample["requests"])
        sample["server_cpu_ms"] = (cpu_seconds(server.process.pid) - cpu) * 1e3 / requests
        sample["reader_cpu_ms"] = (cpu_seconds(server.reader.pid) - reader) * 1e3 / requests
        # All the CPU one HTTP request cost on this machine: server, log reader and client.
        wrk_ms = sample["client_cpu_s"] * 1e3 / requests
        sample["total_cpu_ms"] = sample["server_cpu_ms"] + sample["reader_cpu_ms"] + wrk_ms
    finally:
        server.stop()
    logged = sum(1 for line in server.log.read_text().splitlines() if "POST /score" in line)
    sample["logged"] = logged / (warm["requests"] + sample["requests"])  # every answered request: 1.0
    return sample


def main(runs: int, seconds: float, variants: dict[str, dict[str, str]], log_reader: str) -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    from training.train import train_package

    root = Path(tempfile.mkdtemp(prefix="bench-app-http-"))
    model = root / "model"
    train_package(model, version="v1")
    body = sample_request()
    (root / "body.json").write_bytes(body)
    script = root / "score.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{root / "body.json"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    pipeline: list[float] = []
    pipeline_cpu: list[float] = []
    http: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_ in range(runs):
        steps = ["pipeline", *variants]
        steps = steps[round_ % len(steps) :] + steps[: round_ % len(steps)]
        for step in steps:
            if step == "pipeline":
                rate, cpu_each = inprocess_rate("pipeline", model, body, 2, seconds)
                pipeline.append(rate)
                pipeline_cpu.append(cpu_each * 1e3)
            else:
                http[step].append(http_rate(model, root, script, variants[step], seconds, log_reader))
        print(f"round {round_ + 1}/{runs}: pipeline {pipeline[-1]:.0f}/s, "
              + ", ".join(f"{n} {s[-1]['rps']:.0f} req/s" for n, s in http.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    base, base_cpu = median(pipeline), median(pipeline_cpu)
    print(
        f"\nin-process app pipeline, 2 processes: median {base:.0f}/s, runs {[round(p) for p in pipeline]}, "
        f"{base_cpu:.3f} ms CPU each"
    )
    for name, samples in http.items():
        med = {key: median([s[key] for s in samples]) for key in samples[0]}
        ratios = [s["rps"] / p for s, p in zip(samples, pipeline, strict=True)]
        print(
            f"{name}: HTTP /score at {CLIENTS} clients: median {med['rps']:.0f} req/s = "
            f"{med['rps'] / base:.3f} of the pipeline (per-round ratios {[round(r, 3) for r in ratios]}); "
            f"p50 {med['p50_ms']:.1f} ms, p99 {med['p99_ms']:.1f} ms, server CPU {med['server_cpu_ms']:.3f} ms/req, "
            f"wrk CPU {med['client_cpu_s']:.2f} s, errors {med['errors']:.0f}, "
            f"access-log lines per request {med['logged']:.3f}; CPU per request (server + log reader + wrk) "
            f"{med['total_cpu_ms']:.3f} ms: pipeline CPU / HTTP CPU {base_cpu / med['total_cpu_ms']:.3f}"
        )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--variant", action="append", default=[], help="NAME=VAR=value[,VAR=value...]")
    parser.add_argument("--log-reader", choices=["json", "cat"], default="json")
    args = parser.parse_args()
    chosen = {"default": {}}
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        chosen[name] = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
    main(args.runs, args.seconds, chosen, args.log_reader)
