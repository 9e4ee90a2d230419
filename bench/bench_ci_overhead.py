"""CI overhead: the ci DAG end to end ÷ the same steps as a plain Python script. Target <= 1.15.

Baseline ("plain script"): git clone + checkout of the commit; `docker run` of pytest on tests/app in the
cached test environment image (the ci test step's image and command, the checkout mounted read-only); the
model's files downloaded with azure-storage-blob; `docker build` (classic builder) of the same context;
`docker run` + /readyz + POST /score (the smoke test); `docker push`. No Airflow, no modelship.

Results: the ci DAG for the same kind of commit, (a) with dag.test() in-process and (b) through real
Airflow components (scheduler, dag-processor, api-server; LocalExecutor), triggered over the REST API and
timed from the POST until the run's state is final.

Every run builds a fresh code-only commit of a throwaway clone (so each builds and pushes new code layers
and reuses the dependency and model layers, as a normal commit does) with the same promoted model; the
model cache is emptied before each run, so the DAG downloads the model as the script does. One untimed
warm-up run first fills the Docker layer cache. Variants are interleaved in rotating order, so drift in
the machine's load spreads over all of them.

    python -m bench.bench_ci_overhead [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import MODEL_NAME, REPOSITORY
from bench.artifacts import SourceRepo, publish_and_promote, train
from bench.components import BenchStack, app_tests_argv, clear_model_cache
from bench.dag_runs import AirflowServer, run_dag, use_airflow_home
from bench.load import sample_request, wait_http
from bench.logs import log_file, output_to, run_cli
from bench.report import Report, loadavg, median, stopwatch
from devstack import rootfs
from modelship import net

TOPIC = "ci_overhead"
TARGET = "<= 1.15"


class PlainScript:
    """The CI steps with nothing but git, pytest, azure-storage-blob and the docker CLI."""

    def __init__(self, stack: BenchStack, source: SourceRepo) -> None:
        self.stack, self.source = stack, source
        self.registry = stack.registry.address
        self.config = stack.root / "docker-cli"
        self.config.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "DOCKER_HOST": stack.docker.url,
            "DOCKER_CONFIG": str(self.config),
            "DOCKER_BUILDKIT": "0",  # the classic builder, as modelship.images uses
        }
        subprocess.run(["docker", "login", "-u", stack.registry.username, "--password-stdin", self.registry],
                       input=stack.registry.password, text=True, env=self.env, check=True,
                       capture_output=True)  # fmt: skip
        self.runs = 0

    def _run(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(argv, cwd=cwd, env=env or self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        return done.stdout

    def __call__(self, commit: str, model_version: str, manifest_sha256: str) -> dict[str, float]:
        from azure.storage.blob import ContainerClient

        self.runs += 1
        work = self.stack.root / f"plain-{self.runs}"
        steps: dict[str, float] = {}
        tag = f"{commit[:12]}-{model_version}"
        image = f"{self.registry}/{REPOSITORY}:{tag}"
        started = time.perf_counter()

        with stopwatch() as t:
            self._run("git", "clone", "-q", "--no-checkout", str(self.source.path), str(work / "src"))
            self._run("git", "-c", "advice.detachedHead=false", "checkout", "-q", commit, cwd=work / "src")
        steps["checkout"] = t["s"]

        with stopwatch() as t:
            src = work / "src"
            self._run(*app_tests_argv(self.stack.docker.url, src, self.stack.cache))
        steps["test"] = t["s"]

        with stopwatch() as t:
            conn = json.loads(os.environ["AIRFLOW_CONN_MODELSHIP_BLOB"])["extra"]["connection_string"]
            container = ContainerClient.from_connection_string(conn, os.environ["MODELSHIP_MODEL_STORE"][5:])
            prefix = f"{MODEL_NAME}/versions/{model_version}/"
            model = work / "model"
            for blob in container.list_blobs(name_starts_with=prefix):
                target = model / blob.name[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as handle:
                    container.download_blob(blob.name).readinto(handle)
        steps["fetch_model"] = t["s"]

        with stopwatch() as t:
            context = work / "context"
            wheels = next(p for p in (self.stack.cache / "wheels").iterdir() if p.is_dir() and
                          p.name == _requirements_key(src))  # fmt: skip
            self._run("cp", "-al", str(src / "app"), str(context))
            self._run("cp", "-al", str(wheels), str(context / "wheels"))
            self._run("cp", "-al", str(src / "modelpkg"), str(context / "modelpkg"))  # the app imports it
            self._run("cp", "-r", str(model), str(context / "model"))
            args = {"BASE_IMAGE": rootfs.BASE_IMAGE, "GIT_COMMIT": commit, "MODEL_NAME": "digits",
                    "MODEL_VERSION": model_version, "MODEL_SHA256": manifest_sha256, "APP_VERSION": commit[:12],
                    "SOURCE_URL": str(self.source.path),
                    "BUILD_DATE": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
            argv = ["docker", "build", "-q", "--network", "host", "-t", image]
            for key, value in args.items():
                argv += ["--build-arg", f"{key}={value}"]
            self._run(*argv, str(context))
        steps["build"] = t["s"]

        with stopwatch() as t:
            port = net.free_port()
            name = f"plain-smoke-{self.runs}"
            self._run("docker", "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                      "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-e", f"APP_BIND=127.0.0.1:{port}",
                      "-e", "APP_WORKERS=1", image)  # fmt: skip
            try:
                wait_http(port, "/readyz", timeout=120)
                request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=sample_request(),
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(request, timeout=10) as response:
                    assert response.status == 200
            finally:
                self._run("docker", "rm", "-f", name)
        steps["smoke_test"] = t["s"]

        with stopwatch() as t:
            self._run("docker", "push", "-q", image)
        steps["push"] = t["s"]

        steps["total"] = time.perf_counter() - started
        shutil.rmtree(work, ignore_errors=True)
        return steps


def _requirements_key(src: Path) -> str:
    import hashlib

    return hashlib.sha256((src / "app" / "requirements.txt").read_bytes()).hexdigest()


def main(runs: int) -> Report:
    report = Report(TOPIC, "CI overhead: the ci DAG ÷ the same steps as a plain script")
    logs = log_file(TOPIC)
    logs.unlink(missing_ok=True)
    with BenchStack(TOPIC) as stack:
        env = stack.env()
        source = SourceRepo(stack.root / "source")
        env["MODELSHIP_SOURCE_REPO"] = str(source.path)
        stack.apply(env)
        with output_to(logs):
            use_airflow_home(stack.root / "airflow-dagtest")
            from modelship import apptests
            from modelship.model_store import open_store

            package = train(stack.root, "v1")
            manifest = publish_and_promote(package)
            sha = open_store().manifest_sha256(MODEL_NAME, "v1")
            apptests.environment(source.path, stack.cache)  # built before the timed runs, as the warm-up does
            plain = PlainScript(stack, source)
            warmup = run_dag("ci", {"commit": source.code_change()})
        print(f"warm-up dag.test() run: {warmup.state} in {warmup.seconds:.0f} s (not counted)", flush=True)
        if warmup.state != "success":
            raise RuntimeError(f"warm-up ci run failed: {warmup.tasks}; see {logs}")

        results: dict[str, list[dict[str, Any]]] = {"plain": [], "dagtest": [], "scheduler": []}
        with AirflowServer(stack.root / "airflow-server", env) as server:
            server.wait_for_dag("ci")

            def dagtest(commit: str) -> dict[str, Any]:
                with output_to(logs):
                    timing = run_dag("ci", {"commit": commit})
                return {"timing": timing}

            def scheduled(commit: str) -> dict[str, Any]:
                return {"timing": server.run("ci", {"commit": commit})}

            def script(commit: str) -> dict[str, Any]:
                return {"steps": plain(commit, manifest["version"], sha)}

            variants = [("plain", script), ("dagtest", dagtest), ("scheduler", scheduled)]
            for round_ in range(runs):
                order = variants[round_ % 3 :] + variants[: round_ % 3]
                for name, fn in order:
                    clear_model_cache(env)
                    commit = source.code_change()
                    out = fn(commit)
                    if "timing" in out:
                        timing = out["timing"]
                        if timing.state != "success":
                            raise RuntimeError(f"{name} ci run failed: {timing.tasks}; see {logs}")
                        retried = {k: v["tries"] for k, v in timing.tasks.items() if (v["tries"] or 1) > 1}
                        row = {"total": timing.seconds, "tasks_sum": timing.task_seconds, "busy": timing.busy_seconds,
                               **{k: v["seconds"] for k, v in timing.tasks.items()}, "retried": retried}  # fmt: skip
                    else:
                        row = out["steps"]
                    results[name].append(row)
                    print(f"round {round_ + 1}/{runs} {name}: {row['total']:.1f} s  (load {loadavg()})",
                          flush=True)  # fmt: skip

    plain_totals = [r["total"] for r in results["plain"]]
    report.add("ci DAG, dag.test()", "plain script", plain_totals, "dag.test()",
               [r["total"] for r in results["dagtest"]], "s", target=TARGET)  # fmt: skip
    report.add("ci DAG, scheduler", "plain script", plain_totals, "scheduler + REST trigger",
               [r["total"] for r in results["scheduler"]], "s", target=TARGET)  # fmt: skip
    # Orchestration alone, within each run: its wall clock against the time inside its tasks. The tests'
    # duration, which dominates every run and swings with the machine's load, cancels out here.
    for name, label in (("dagtest", "dag.test()"), ("scheduler", "scheduler + REST trigger")):
        report.add(f"ci DAG, {label}: orchestration only", "Σ task durations of the run",
                   [r["tasks_sum"] for r in results[name]], "wall clock of the same run",
                   [r["total"] for r in results[name]], "s", target=TARGET)  # fmt: skip
    # The other measure: time in which no task body runs. test and fetch_model run side by side, so
    # it is the wall clock minus the union of the task intervals (wall − Σ durations would count the overlap).
    for name, label in (("dagtest", "dag.test()"), ("scheduler", "scheduler + REST trigger")):
        busy, walls = [r["busy"] for r in results[name]], [r["total"] for r in results[name]]
        gaps = [wall - b for wall, b in zip(walls, busy, strict=True)]
        report.add(f"ci DAG, {label}: time outside the task bodies", "time in which a task body ran", busy,
                   "wall clock of the same run", walls, "s", target="wall − busy <= 2 s", met=median(gaps) <= 2.0)
        report.note(f"{label}: time outside the task bodies (wall clock − union of the task intervals), median "
                    f"{median(gaps):.2f} s over {len(gaps)} runs: {[round(g, 2) for g in gaps]}")  # fmt: skip

    steps = ["checkout", "test", "fetch_model", "build", "smoke_test", "push"]
    rows = []
    for step in [*steps, "resolve", "cleanup", "tasks_sum", "busy", "total"]:
        row: dict[str, Any] = {"step / task": step}
        for name in ("plain", "dagtest", "scheduler"):
            values = [r[step] for r in results[name] if r.get(step) is not None]
            row[f"{name} median s"] = round(median(values), 2) if values else ""
        rows.append(row)
    report.table("Median seconds per step (plain script) and per task (DAG)", rows)
    report.table("Every run (seconds)", [
        {"variant": name, "run": i + 1, **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}}
        for name, rs in results.items() for i, r in enumerate(rs)
    ])  # fmt: skip
    report.note(f"{runs} runs of each variant, interleaved in rotating order, plus one untimed warm-up run. A run "
                f"takes {median(plain_totals) / 60:.1f} min here (15 runs in all); the app's own tests "
                "(tests/app, ~100 tests) are most of every run in every variant.")  # fmt: skip
    report.note("The plain script does not verify model hashes or lineage labels and has no retries: that "
                "work is counted as modelship's overhead.")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run_cli(lambda: main(args.runs))
