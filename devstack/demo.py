"""`make demo`: the whole story, headless, against a running stack (`make up` or `make up-distributed`).

train + publish model vN → model_refresh promotes it → ci builds and pushes (started by the `model`
Asset) → release deploys the desired state (newest commit that passed ci × the model the alias names now)
→ /score against the deployed app → `modelship status`. Then the same with model vN+1, to show the image and
the deployment follow; then the data scientist's rollback: model_refresh promotes vN again, ci announces the
image it built before (no rebuild), the release serves it again; `modelship history` shows all three.
Every step is printed as it goes; the first failure ends the demo non-zero with the failing task's last log
lines. --target kubernetes (make demo TARGET=kubernetes) releases to the local cluster instead.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from modelship.airflow_api import AirflowAPI, AirflowAPIError
from modelship.settings import Settings

# How often the demo asks Airflow whether a run has started or ended: every wait costs half of it on average, and
# the story waits a dozen times. One GET of one run (≈ 10 ms of the api-server's time) per poll.
POLL = 0.5


class DemoFailed(RuntimeError):
    pass


class Airflow:
    """What the demo asks of Airflow's REST API (modelship.airflow_api), plus where the tasks ran."""

    def __init__(self, api: AirflowAPI) -> None:
        self.api = api
        self.hosts: set[str] = set()  # the hostnames task instances ran on, over every run waited for

    def run_ids(self, dag_id: str) -> set[str]:
        return {run.dag_run_id for run in self.api.runs(dag_id)}

    def wait(self, dag_id: str, run_id: str, timeout: float = 900) -> Any:
        run = self.api.wait(dag_id, run_id, timeout=timeout, interval=POLL)
        tis = self.api.tasks(dag_id, run_id)
        summary = ", ".join(f"{ti.task_id}={_state(ti.state)}" for ti in tis)
        # Where the work ran: one host standalone, each Celery worker's on the distributed stack.
        hosts = sorted({ti.hostname for ti in tis if ti.hostname})
        self.hosts.update(hosts)
        if _state(run.state) != "success":
            failed = [ti for ti in tis if _state(ti.state) == "failed"]
            tails = "\n".join(
                f"--- {ti.task_id} (try {ti.try_number}):\n"
                + self.api.log_tail(dag_id, run_id, ti.task_id, ti.try_number)
                for ti in failed
            )
            raise DemoFailed(f"{dag_id} run {run_id} failed ({summary})\n{tails}")
        step(f"{dag_id} {run_id}: success ({summary}) on {', '.join(hosts) or 'no host'}")
        return run


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_cli(*args: str) -> str:
    """`modelship ARGS` as a user types it (the same parser, handlers and output), run in this process: a new
    interpreter would import Airflow and the Azure SDK again for every command, ≈ 6 s each on 2 cores."""
    from modelship.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if code != 0:
        raise DemoFailed(f"modelship {' '.join(args)} failed:\n{err.getvalue().strip()}")
    return out.getvalue()


def next_version(settings: Settings) -> str:
    from modelship.model_store import open_store

    taken = {v["version"] for v in open_store(settings).list_versions(settings.model_name)}
    n = 1
    while f"v{n}" in taken:
        n += 1
    return f"v{n}"


def score(port: int) -> dict[str, Any]:
    from modelship.images import sample_digit

    png, label = sample_digit()
    body = json.dumps({"images": [base64.b64encode(png).decode()]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.load(response)
    top = result["predictions"][0]["top3"][0]
    step(f"POST /score with a held-out '{label}': top-1 {top['label']} ({top['probability']:.3f})")
    if top["label"] != label:
        raise DemoFailed(f"the deployed app classified a {label} as {top['label']}")
    return result


def wait_for_image(airflow: Airflow, ci_before: set[str], version: str, timeout: float = 1800) -> dict[str, Any]:
    """The `image` event of the ci run that built model `version`.

    The `model` event starts ci; so may a commit landing on the branch meanwhile (the commits watcher).
    Runs are followed oldest first until one pushed an image of `version`; a failed run ends the demo.
    """
    deadline = time.monotonic() + timeout
    seen = set(ci_before)
    while True:
        run_id = airflow.api.wait_for_new_run("ci", seen, timeout=max(deadline - time.monotonic(), 1), interval=POLL)
        seen.add(run_id)
        airflow.wait("ci", run_id, timeout=max(deadline - time.monotonic(), 1))
        # Built and pushed, or found already pushed and announced (rebuilt: false).
        image = airflow.api.return_value("ci", run_id, "push") or airflow.api.return_value("ci", run_id, "announce")
        if isinstance(image, dict) and image.get("model_version") == version:
            return image
        step(f"ci {run_id} made no image of model {version} (a commit-triggered run); waiting for the next run")


def promote(airflow: Airflow, settings: Settings, version: str) -> dict[str, Any]:
    """model_refresh promotes `version`; the image event of the ci run its `model` event starts."""
    ci_before = airflow.run_ids("ci")
    step(f"trigger model_refresh for {version}: validate, promote")
    run_id = airflow.api.trigger("model_refresh", {"model_name": settings.model_name, "version": version})
    airflow.wait("model_refresh", run_id)
    step("ci starts from the `model` Asset event: resolve → (announce | test, build, smoke-test, push)")
    image = wait_for_image(airflow, ci_before, version)
    how = "rebuilt and pushed" if image.get("rebuilt", True) else "already in the registry: announced, not rebuilt"
    step(f"{image['repository']}@{image['digest']}\n    tag {image['tag']}: commit {image['commit']}, model {version}"
         f" ({how}; {image.get('layers_pushed', 0)} layers, {image.get('bytes_pushed', 0)} bytes pushed)")  # fmt: skip
    return image


def release(airflow: Airflow, settings: Settings, image: dict[str, Any], target: str) -> dict[str, Any]:
    """A release of the desired state (no image named); what `modelship status` reports after it."""
    step(f"release ({target} target): the desired state, verified; rolled back and quarantined on failure")
    run_id = airflow.api.trigger("release", {"target": target})
    airflow.wait("release", run_id)
    step("modelship status")
    print(run_cli("status", "--target", target).rstrip(), flush=True)
    status = json.loads(run_cli("status", "--target", target, "--json"))
    score(int(status.get("port") or settings.docker_deploy_port))
    served = (status.get("image_digest"), status.get("commit"), status.get("model_version"))
    if served != (image["digest"], image["commit"], image["model_version"]):
        raise DemoFailed(f"status reports digest/commit/model {served}, expected {image['digest']}, "
                         f"{image['commit']}, {image['model_version']}")  # fmt: skip
    if not (status.get("desired") or {}).get("in_desired_state"):
        raise DemoFailed(f"status says what serves is not the desired state: {status.get('desired')}")
    return status


def ship_model(airflow: Airflow, settings: Settings, version: str, workdir: Path, target: str) -> dict[str, Any]:
    """One round of the story for a new model `version`; returns what `modelship status` reports at the end."""
    package = workdir / version
    step(f"train model {settings.model_name} {version} on scikit-learn's digits and export ONNX")
    from training.train import train_package  # sklearn: imported once, by the first round

    train_package(package, version, settings.model_name)
    step(f"publish {version} to the model store ({settings.model_store})")
    print(run_cli("model", "publish", str(package)).strip(), flush=True)
    return release(airflow, settings, promote(airflow, settings, version), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack demo", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("docker", "kubernetes"), default="docker")
    target = parser.parse_args(argv).target
    settings = Settings.get()
    try:
        airflow = Airflow(AirflowAPI.from_environment())
        for dag_id in ("model_refresh", "ci", "release"):
            airflow.api.unpause(dag_id)
        served = []
        with tempfile.TemporaryDirectory(prefix="modelship-demo-") as tmp:
            for _ in range(2):
                served.append(ship_model(airflow, settings, next_version(settings), Path(tmp), target))
        first, second = served
        step(f"the data scientist rolls back: promote {first['model_version']} again")
        rolled_back = release(airflow, settings, promote(airflow, settings, first["model_version"]), target)
        if rolled_back["image_digest"] != first["image_digest"]:
            raise DemoFailed(f"the rollback serves {rolled_back['image_digest']}, not {first['image_digest']}")
        step("modelship history")
        print(run_cli("history", "--target", target).rstrip(), flush=True)
    except (DemoFailed, AirflowAPIError, OSError, KeyError, ValueError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    step(
        f"demo complete: model {first['model_version']} -> {second['model_version']} -> {first['model_version']}"
        f" (rolled back, same image {first['image_digest'][:19]}, not rebuilt), serving on {target} "
        f"(commit {second['commit'][:12]}); tasks ran on {', '.join(sorted(airflow.hosts))}\n"
        f"    Airflow UI: {airflow.api.url}\n"
        f"    Deployments page (what serves, the history, roll back): {airflow.api.url}/plugin/deployments"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
