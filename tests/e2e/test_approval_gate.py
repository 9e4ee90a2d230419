"""The release's approval gate, end to end on the docker target: the release DAG's real tasks (dag.test) with
MODELSHIP_APPROVAL_TARGETS=docker, and a person answering through the Airflow UI's own API (the Required
Actions list, GET /api/v2/dags/~/dagRuns/~/hitlDetails, and PATCH …/taskInstances/approve/-1/hitlDetails) on
a real api-server sharing the run's metadata DB.

The release waits (the `approve` task in awaiting_input, deploy not started, nothing new serving) until
the answer. Rejected: skipped, naming who and why, nothing deployed. Approved: deployed, and the record
(`modelship history`) names the approver. The image is ci_v1's, on a serving port of this module's own.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests

from modelship import net
from tests.e2e.pipeline import asset_events, run_dag, task_states, why
from tests.e2e.test_release_dag import cli

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]


@pytest.fixture(scope="module")
def gated(ci_v1, pipeline_env, docker_client, airflow_rest):
    commit, ci_run = ci_v1
    assert str(ci_run.state) == "success", why(ci_run)
    image = [e for e in asset_events("image") if e["commit"] == commit and e["model_version"] == "v1"][-1]
    port = net.free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSHIP_APPROVAL_TARGETS", "docker")
        mp.setenv("MODELSHIP_DOCKER_DEPLOY_PORT", str(port))
        yield {"image": f"{image['repository']}@{image['digest']}", "digest": image["digest"], "commit": commit,
               "port": port}  # fmt: skip
    for container in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
        container.remove(force=True)


class Person(threading.Thread):
    """Someone at the Airflow UI: waits for the release's approval to show in Required Actions, looks at it for
    a moment, then answers. What they saw while the run waited is kept for the test to check."""

    def __init__(self, rest: dict[str, str], choice: str, reason: str, port: int) -> None:
        super().__init__(daemon=True)
        self.base, self.choice, self.reason, self.port = rest["MODELSHIP_AIRFLOW_URL"], choice, reason, port
        password = json.loads(Path(rest["MODELSHIP_AIRFLOW_PASSWORD_FILE"]).read_text())["admin"]
        self.session = requests.Session()
        self.session.trust_env = False
        token = self.session.post(f"{self.base}/auth/token", json={"username": "admin", "password": password},
                                  timeout=30).json()["access_token"]  # fmt: skip
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.error: BaseException | None = None
        self.seen: dict[str, Any] = {}

    def run(self) -> None:
        try:
            self._answer()
        except BaseException as exc:  # handed to the test's thread
            self.error = exc

    def _pending(self) -> list[dict[str, Any]]:
        found = self.session.get(f"{self.base}/api/v2/dags/~/dagRuns/~/hitlDetails",
                                 params={"response_received": "false"}, timeout=30)  # fmt: skip
        found.raise_for_status()
        return [d for d in found.json()["hitl_details"] if d["task_instance"]["dag_id"] == "release"]

    def _answer(self) -> None:
        deadline = time.monotonic() + 300
        while not (pending := self._pending()):
            assert time.monotonic() < deadline, "the release never asked for approval"
            time.sleep(0.5)
        [detail] = pending
        run_id = detail["task_instance"]["dag_run_id"]
        time.sleep(3)  # nobody has answered yet: the run must still be waiting after a while
        tis = self.session.get(f"{self.base}/api/v2/dags/release/dagRuns/{run_id}/taskInstances", timeout=30).json()
        self.seen = {
            "detail": detail,
            "states": {ti["task_id"]: ti["state"] for ti in tis["task_instances"]},
            "serving": net.port_open(self.port),
        }
        answer = self.session.patch(
            f"{self.base}/api/v2/dags/release/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
            json={"chosen_options": [self.choice], "params_input": {"reason": self.reason}}, timeout=30,
        )  # fmt: skip
        answer.raise_for_status()
        self.seen["answer"] = answer.json()


def release_answered_by(person: Person, image: str):
    person.start()
    run = run_dag("release", {"target": "docker", "image": image})
    person.join(timeout=60)
    if person.error is not None:
        raise person.error
    return run


def test_the_release_waits_and_a_rejection_ends_skipped_with_nothing_deployed(gated, airflow_rest, capfd) -> None:
    person = Person(airflow_rest, "Reject", "not during the sale", gated["port"])
    run = release_answered_by(person, gated["image"])

    # While it waited: the approval was pending, deploy had not started, and nothing new served.
    seen = person.seen
    assert seen["states"]["approve"] == "awaiting_input" and seen["states"]["deploy"] is None, seen["states"]
    assert seen["serving"] is False
    detail = seen["detail"]
    assert detail["subject"].startswith("Deploy digits v1 (commit ") and detail["subject"].endswith("to docker?")
    assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
    # What would change: serving now (nothing) → this image's commit, model version and accuracy, digest.
    body = detail["body"]
    assert "nothing serves" in body and gated["digest"] in body and gated["commit"][:12] in body, body
    assert "digits v1 (accuracy 0.9" in body, body

    states = task_states(run)
    assert str(run.state) == "success", states  # a decision, not a failure: no red run, no failure notice
    assert states == {"select_image": "success", "approve": "skipped", "deploy": "skipped", "record": "skipped",
                      "quarantine": "skipped"}  # fmt: skip
    assert seen["answer"]["responded_by"]["name"] == "admin" and seen["answer"]["chosen_options"] == ["Reject"]
    assert not net.port_open(gated["port"])  # nothing was deployed
    assert [r for r in asset_events("deployments") if r.get("run_id") == run.run_id] == []
    # Who and why, in the approve task's log (dag.test() writes the task logs to its own output).
    log = capfd.readouterr().out
    assert "admin rejected the release of" in log and "not during the sale. Nothing was deployed" in log


def test_an_approved_release_deploys_and_the_history_names_the_approver(gated, airflow_rest) -> None:
    person = Person(airflow_rest, "Approve", "checked the canary", gated["port"])
    run = release_answered_by(person, gated["image"])
    assert person.seen["states"]["deploy"] is None and person.seen["serving"] is False  # it waited

    states = task_states(run)
    assert str(run.state) == "success" and states["approve"] == "success" and states["deploy"] == "success", states
    with urllib.request.urlopen(f"http://127.0.0.1:{gated['port']}/version", timeout=10) as response:
        served = json.load(response)
    assert (served["commit"], served["model"]["version"]) == (gated["commit"], "v1")

    [record] = [r for r in asset_events("deployments") if r.get("run_id") == run.run_id]
    assert record["approved_by"] == "admin" and record["outcome"] == "deployed"
    timeline = cli("history", "--target", "docker", env=airflow_rest)
    assert [r["approved_by"] for r in timeline if r["run_id"] == run.run_id] == ["admin"]

