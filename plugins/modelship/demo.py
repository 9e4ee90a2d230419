"""`make demo`: the whole story, headless, against a running stack (`make up` or `make up-distributed`).

train + publish model vN → model_refresh promotes it → ci builds and pushes (started by the `model`
Asset) → release deploys it (docker target) → /score against the deployed app → `modelship status`.
Then the same with model vN+1, to show the image and the deployment follow. Every step is printed as it
goes; the first failure ends the demo non-zero with the failing task's last log lines.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from modelship.settings import Settings


class DemoFailed(RuntimeError):
    pass


class Airflow:
    """The few calls of Airflow 3's REST API the demo needs (token from the simple auth manager)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        token = self._call("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        self.token = token["access_token"]
        self.hosts: set[str] = set()  # the hostnames task instances ran on, over every run waited for

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Any:
        request = urllib.request.Request(f"{self.base}{path}", method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(request, data=data, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise DemoFailed(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()[:500]}") from exc
        ctype = response.headers.get("Content-Type", "")
        return json.loads(text) if "json" in ctype else text

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.request.quote(run_id, safe="")
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """The task's return value (None if it returned nothing, was skipped or did not run)."""
        quoted = urllib.request.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
        try:
            entry = self._call("GET", f"{path}?deserialize=true&stringify=false")
        except DemoFailed as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return entry.get("value") if isinstance(entry, dict) else None

    def log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 15) -> str:
        quoted = urllib.request.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        try:
            content = self._call("GET", path)
        except DemoFailed as exc:
            return str(exc)
        if isinstance(content, dict):
            content = content.get("content", "")
            if isinstance(content, list):
                content = "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in content)
        return "\n".join(str(content).splitlines()[-lines:])

    def wait(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                break
            time.sleep(2)
        else:
            raise DemoFailed(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
        tis = self.task_instances(dag_id, run_id)
        summary = ", ".join(f"{ti['task_id']}={ti['state']}" for ti in tis)
        # Where the work ran: one host standalone, each Celery worker's on the distributed stack.
        hosts = sorted({ti["hostname"] for ti in tis if ti.get("hostname")})
        self.hosts.update(hosts)
        if run["state"] != "success":
            failed = [ti for ti in tis if ti["state"] == "failed"]
            tails = "\n".join(
                f"--- {ti['task_id']} (try {ti['try_number']}):\n"
                + self.log_tail(dag_id, run_id, ti["task_id"], ti["try_number"])
                for ti in failed
            )
            raise DemoFailed(f"{dag_id} run {run_id} failed ({summary})\n{tails}")
        step(f"{dag_id} {run_id}: success ({summary}) on {', '.join(hosts) or 'no host'}")
        return run

    def wait_for_new_run(self, dag_id: str, after: set[str], timeout: float = 120) -> str:
        """The id of the oldest run of `dag_id` that was not there before (one an Asset event started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [r["dag_run_id"] for r in self.runs(dag_id) if r["dag_run_id"] not in after]
            if new:
                return new[-1]  # runs() lists the newest first
            time.sleep(2)
        raise DemoFailed(f"no new {dag_id} run started within {timeout:.0f}s")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_cli(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoFailed(f"{' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


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
        run_id = airflow.wait_for_new_run("ci", seen, timeout=max(deadline - time.monotonic(), 1))
        seen.add(run_id)
        airflow.wait("ci", run_id, timeout=max(deadline - time.monotonic(), 1))
        image = airflow.xcom("ci", run_id, "push")
        if isinstance(image, dict) and image.get("model_version") == version:
            return image
        step(f"ci {run_id} pushed no image of model {version} (a commit-triggered run); waiting for the next run")


def ship_model(airflow: Airflow, settings: Settings, version: str, workdir: Path) -> dict[str, Any]:
    """One round of the story for model `version`; returns what `modelship status` reports at the end."""
    bin_dir = Path(sys.executable).parent
    package = workdir / version
    step(f"train model {settings.model_name} {version} on scikit-learn's digits and export ONNX")
    run_cli(sys.executable, "-m", "training.train", "--out", str(package), "--version", version)
    step(f"publish {version} to the model store ({settings.model_store})")
    print(run_cli(str(bin_dir / "modelship"), "model", "publish", str(package)).strip(), flush=True)

    ci_before = {r["dag_run_id"] for r in airflow.runs("ci")}
    step(f"trigger model_refresh for {version}: validate, promote")
    run_id = airflow.trigger("model_refresh", {"model_name": settings.model_name, "version": version})
    airflow.wait("model_refresh", run_id)

    step("ci starts from the `model` Asset event: test, build, smoke-test, push")
    image = wait_for_image(airflow, ci_before, version)
    ref = f"{image['repository']}@{image['digest']}"
    step(f"pushed {ref}\n    tag {image['tag']}: commit {image['commit']}, model {version} ({image['model_sha256']})")

    step("release (docker target) deploys that image by digest: candidate, verify, swap, roll back on failure")
    run_id = airflow.trigger("release", {"target": "docker", "image": ref})
    airflow.wait("release", run_id)
    score(settings.docker_deploy_port)

    step("modelship status")
    print(run_cli(str(bin_dir / "modelship"), "status", "--target", "docker").rstrip(), flush=True)
    status = json.loads(run_cli(str(bin_dir / "modelship"), "status", "--target", "docker", "--json"))
    served = (status.get("image_digest"), status.get("commit"), status.get("model_version"))
    if served != (image["digest"], image["commit"], version):
        raise DemoFailed(f"status reports digest/commit/model {served}, expected {image['digest']}, "
                         f"{image['commit']}, {version}")  # fmt: skip
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--airflow", default=os.environ.get("MODELSHIP_AIRFLOW_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", type=Path, default=os.environ.get("MODELSHIP_AIRFLOW_PASSWORD_FILE"))
    args = parser.parse_args(argv)
    settings = Settings.get()
    password_file = args.password_file or Path(
        os.environ.get("AIRFLOW_HOME", settings.state_dir / "airflow")
    ) / "simple_auth_manager_passwords.json.generated"
    try:
        password = json.loads(password_file.read_text())[args.user]
        airflow = Airflow(args.airflow, args.user, password)
        for dag_id in ("model_refresh", "ci", "release"):
            airflow.unpause(dag_id)
        served = []
        with tempfile.TemporaryDirectory(prefix="modelship-demo-") as tmp:
            for _ in range(2):
                served.append(ship_model(airflow, settings, next_version(settings), Path(tmp)))
    except (DemoFailed, OSError, KeyError, ValueError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    first, second = served
    step(
        f"demo complete: model {first['model_version']} -> {second['model_version']}, image "
        f"{first['image_digest'][:19]} -> {second['image_digest'][:19]}, serving on 127.0.0.1:{second['port']} "
        f"(commit {second['commit'][:12]}); tasks ran on {', '.join(sorted(airflow.hosts))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
