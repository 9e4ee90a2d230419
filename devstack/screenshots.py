"""README screenshots of the Airflow UI, taken with Debian's headless Chromium against a running stack.

    make up && make demo                        # green runs of all three DAGs to show
    .venv/bin/python -m devstack.screenshots    # writes docs/images/*.png (1400x900)

Besides the DAG views and the trigger form: the Deployments page (modelship.ui) as the UI's navigation shows
it, once its frame has drawn what serves and the history.

Logs in the way the UI does: a JWT from the simple auth manager (modelship.airflow_api's login with the
admin password `make up` generated) in the `_token` cookie, which the API server reads on every UI request;
the runs to show are found through the same client.
Chromium is driven over the DevTools protocol on a loopback port (set the cookie, open a page, wait until
it shows what we came for, click the Trigger button, capture), with a fresh profile and every
background-networking feature off. Needs `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_client.client.models.dag_run_response import DAGRunResponse
from websockets.sync.client import connect

from modelship.airflow_api import DEFAULT_URL, PASSWORDS_FILE, AirflowAPI, AirflowAPIError, password_from_file

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1400, 900
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--hide-scrollbars",
    "--disable-extensions", "--mute-audio", f"--window-size={WIDTH},{HEIGHT}",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]  # fmt: skip


class ScreenshotFailed(RuntimeError):
    pass


class Page:
    """One Chromium tab over the DevTools protocol (only the few commands the screenshots need)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; we only wait for our answer
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise ScreenshotFailed(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expression):
                return
            time.sleep(0.3)
        raise ScreenshotFailed(f"page did not show {what} within {timeout:.0f}s ({self.js('location.href')})")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", "a loaded document")

    def capture(self, out: Path) -> None:
        time.sleep(1.5)  # let charts and the grid settle after the last request
        shot = self.send("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", flush=True)


@contextlib.contextmanager
def chromium(binary: str) -> Iterator[Page]:
    profile = Path(tempfile.mkdtemp(prefix="modelship-chromium-"))
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise ScreenshotFailed(f"{binary} did not open its DevTools port (exit code {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10))
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(ws_url, max_size=64 * 2**20, open_timeout=10) as ws:
            page = Page(ws)
            page.send("Page.enable")
            page.send("Network.enable")
            page.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                      mobile=False)  # fmt: skip
            yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        shutil.rmtree(profile, ignore_errors=True)


def latest_green_run(api: AirflowAPI, dag_id: str) -> DAGRunResponse:
    for run in api.runs(dag_id, limit=50, state="success"):
        states = api.task_states(dag_id, run.dag_run_id)
        # Every step green (a branch not taken, e.g. ci's `announce` when it builds, shows as skipped).
        if states and set(states.values()) <= {"success", "skipped"} and "success" in states.values():
            return run
    raise ScreenshotFailed(f"{dag_id} has no run with every task green: run `make demo` first")


# Per DAG: the view of its latest all-green run, and what the UI must show before the picture is worth
# taking. Two tasks read best as a graph; ci's eight as the grid (every task of the last runs, green)
# beside the run's task list with durations.
VIEWS = {
    "model_refresh": ("graph", "document.querySelectorAll('.react-flow__node').length >= 2"),
    "ci": ("grid", "document.body.innerText.includes('8 Task Instances')"),
    "release": ("graph", "document.querySelectorAll('.react-flow__node').length >= 2"),
}
SET_VIEW = "localStorage.setItem('default_dag_view', JSON.stringify('{view}'))"  # the UI's grid/graph toggle
FORM_READY = "[...document.querySelectorAll('[role=dialog]')].some(d => d.innerText.includes('Minimum accuracy'))"
CLICK_TRIGGER = """(() => {
  const b = [...document.querySelectorAll('button')].find(e => e.innerText.trim() === 'Trigger');
  if (b) b.click();
  return !!b;
})()"""


# The Deployments page, in its frame inside the UI: drawn once a target card and a history row are there.
DEPLOYMENTS_READY = """(() => {
  const frame = document.querySelector('iframe[title=Deployments]');
  const doc = frame && frame.contentDocument;
  return !!(doc && doc.querySelector('[data-target] .serving') && doc.querySelector('tr.record'));
})()"""


def dag_views(page: Page, base: str, runs: dict[str, DAGRunResponse], out: Path) -> None:
    """Each DAG's latest green run in its view, then model_refresh's trigger form filled in."""
    page.open(f"{base}/dags")
    for dag_id, run in runs.items():
        view, ready = VIEWS[dag_id]
        page.js(SET_VIEW.format(view=view))
        page.open(f"{base}/dags/{dag_id}/runs/{urllib.parse.quote(run.dag_run_id, safe='')}")
        page.wait_for(ready, f"the {dag_id} run in the {view} view")
        page.capture(out / f"dag-{dag_id}.png")
    page.open(f"{base}/dags/model_refresh")
    page.wait_for(CLICK_TRIGGER, "the Trigger button")
    page.wait_for(FORM_READY, "the trigger form")
    # Fill in the one required field the way a data scientist would, with the version last promoted.
    page.js("document.getElementById('element_version').focus()")
    page.send("Input.insertText", text=str((runs["model_refresh"].conf or {}).get("version", "v1")))
    page.capture(out / "trigger-model_refresh.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airflow", default=os.environ.get("MODELSHIP_AIRFLOW_URL", DEFAULT_URL))
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", type=Path, default=REPO / ".state" / "airflow" / PASSWORDS_FILE)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--only", nargs="+", choices=("dags", "deployments"), default=["dags", "deployments"],
                        help="the DAG views and trigger form (dags), the Deployments page (deployments)")  # fmt: skip
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    base = args.airflow.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        api = AirflowAPI.login(base, args.user, password_from_file(args.password_file, args.user))
        runs = {dag_id: latest_green_run(api, dag_id) for dag_id in VIEWS} if "dags" in args.only else {}
        host = urllib.parse.urlsplit(base).hostname
        with chromium(args.chromium) as page:
            page.send("Network.setCookie", name="_token", value=api.token, domain=host, path="/", httpOnly=True)
            if "dags" in args.only:
                dag_views(page, base, runs, args.out)
            if "deployments" in args.only:
                page.open(f"{base}/plugin/deployments")
                page.wait_for(DEPLOYMENTS_READY, "the Deployments page with what serves and the history", timeout=60)
                page.capture(args.out / "deployments-page.png")
    except (ScreenshotFailed, AirflowAPIError, OSError, KeyError) as exc:
        print(f"screenshots FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
