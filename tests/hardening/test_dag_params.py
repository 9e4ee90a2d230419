"""Bad DAG params: refused when the run is created (Airflow's param validation), or the run fails at the
first task that can know, at once (no retries), with a message naming the param and nothing done after it.

Already proven elsewhere, not repeated here: model_refresh without a version is refused at creation
(tests/dags/test_model_refresh.py::test_a_run_without_a_version_is_refused_naming_the_param).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.pipeline import REPO, run_dag, task_states
from tests.hardening.support import try_numbers

# --- refused when the run is created ----------------------------------------------------------------------


@pytest.mark.parametrize("commit", ["not-a-sha", "abc12", "HEAD", "0123456789ABCDEF", "a" * 41, "$(id)", " deadbeef"])
def test_ci_refuses_a_malformed_commit_when_the_run_is_created(airflow_db: Path, commit: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=r"Invalid input for param commit"):
        run_dag("ci", {"commit": commit})


def test_release_refuses_an_unknown_target_when_the_run_is_created(airflow_db: Path) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=r"Invalid input for param target"):
        run_dag("release", {"target": "moon"})


# --- the first task that can know fails, once ----------------------------------------------------------------


@pytest.mark.parametrize(
    "image", ["not an image", "127.0.0.1:5000/modelship/digits-app", "127.0.0.1:5000/Modelship/App:v1", "app@sha256:1"]
)
def test_release_fails_at_select_image_naming_a_malformed_image_param(
    dag_env, image: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dag("release", {"target": "docker", "image": image})
    assert str(run.state) == "failed"
    assert task_states(run) == {"select_image": "failed", "deploy": "upstream_failed", "record": "upstream_failed",
                                "quarantine": "upstream_failed"}  # fmt: skip
    assert try_numbers(run)["select_image"] == 1  # a verdict: no retry
    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert f"param 'image' {image!r} is not an image reference" in logs


@pytest.mark.registry
def test_release_fails_at_select_image_for_an_image_not_in_the_registry(
    dag_env, registry_conn: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    image = f"{registry_conn}/modelship/digits-app:no-such-tag"
    run = run_dag("release", {"target": "docker", "image": image})
    assert task_states(run) == {"select_image": "failed", "deploy": "upstream_failed", "record": "upstream_failed",
                                "quarantine": "upstream_failed"}  # fmt: skip
    assert try_numbers(run)["select_image"] == 1
    output = capfd.readouterr()
    assert f"{image} is not in the registry" in output.out + output.err + caplog.text


def test_model_refresh_fails_at_validate_naming_an_unknown_model(
    dag_env, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from modelship.model_store import LocalModelStore

    run = run_dag("model_refresh", {"model_name": "no-such-model", "version": "v1"})
    assert task_states(run) == {"validate": "failed", "promote": "upstream_failed"}
    assert try_numbers(run)["validate"] == 1
    output = capfd.readouterr()
    assert "check params model_name='no-such-model' and version='v1'" in output.out + output.err + caplog.text
    assert LocalModelStore(dag_env).read_alias("digits", "production")["version"] == "v1"  # untouched


@pytest.mark.registry
def test_ci_with_a_commit_not_in_the_repository_fails_at_checkout_and_builds_nothing(
    dag_env, registry_conn: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Well-formed, so the param passes; only a fetch of the repository can tell it does not exist, and
    # checkout is the step that fetches. It must fail there, once, and nothing after it may run.
    commit = "0123456789abcdef0123456789abcdef01234567"
    run = run_dag("ci", {"commit": commit})
    states = task_states(run)
    assert str(run.state) == "failed", states
    assert states["resolve"] == "success" and states["checkout"] == "failed", states
    assert {states[t] for t in ("test", "fetch_model", "build", "smoke_test", "push")} == {"upstream_failed"}, states
    assert try_numbers(run)["checkout"] == 1
    output = capfd.readouterr()
    assert f"commit {commit} is not in {REPO}" in output.out + output.err + caplog.text


# --- refused through the REST API, which the UI's trigger form submits to ----------------------------------


@pytest.fixture(scope="module")
def rest(airflow_rest: dict[str, str]) -> dict[str, str]:
    """The session's api-server with this repository's DAGs serialized (what the dag-processor does), and a token."""
    import json
    import os
    import subprocess
    import sys

    from modelship import airflow_api

    airflow = str(Path(sys.executable).parent / "airflow")
    done = subprocess.run([airflow, "dags", "reserialize"], env=os.environ, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    password = json.loads(Path(airflow_rest["MODELSHIP_AIRFLOW_PASSWORD_FILE"]).read_text())["admin"]
    token = airflow_api.login(airflow_rest["MODELSHIP_AIRFLOW_URL"], "admin", password)
    return {"url": airflow_rest["MODELSHIP_AIRFLOW_URL"], "token": token}


def trigger(rest: dict[str, str], dag_id: str, conf: dict) -> tuple[int, str]:
    import requests

    answer = requests.post(f"{rest['url']}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf},
                           headers={"Authorization": f"Bearer {rest['token']}"}, timeout=60)  # fmt: skip
    return answer.status_code, answer.text


def runs_of(rest: dict[str, str], dag_id: str) -> int:
    import requests

    answer = requests.get(f"{rest['url']}/api/v2/dags/{dag_id}/dagRuns",
                          headers={"Authorization": f"Bearer {rest['token']}"}, timeout=60)  # fmt: skip
    return answer.json()["total_entries"]


@pytest.mark.parametrize(
    ("dag_id", "conf", "param"),
    [
        ("ci", {"commit": "$(id)"}, "commit"),
        ("ci", {"commit": "HEAD"}, "commit"),
        ("release", {"target": "moon"}, "target"),
        ("model_refresh", {"model_name": "digits"}, "version"),  # no version: it has no default on purpose
    ],
)
def test_the_rest_api_and_so_the_trigger_form_refuse_a_bad_param_and_create_no_run(
    rest: dict[str, str], dag_id: str, conf: dict, param: str
) -> None:
    before = runs_of(rest, dag_id)
    status, text = trigger(rest, dag_id, conf)
    assert status == 400 and f"Invalid input for param {param}" in text, (status, text)
    assert runs_of(rest, dag_id) == before  # nothing was created, so nothing ran


def test_the_trigger_form_is_built_from_the_same_rules_the_api_enforces(rest: dict[str, str]) -> None:
    """The UI's form renders each Param from the DAG's details (and validates it in the browser with the same
    JSON schema); what it submits goes to the endpoint above, which refuses anything else."""
    import requests

    def params(dag_id: str) -> dict:
        answer = requests.get(f"{rest['url']}/api/v2/dags/{dag_id}/details",
                              headers={"Authorization": f"Bearer {rest['token']}"}, timeout=60)  # fmt: skip
        return answer.json()["params"]

    commit = params("ci")["commit"]["schema"]
    assert commit["pattern"] and "HEAD" not in commit["pattern"], commit
    assert params("release")["target"]["schema"]["enum"] == ["docker", "kubernetes"]
    assert params("model_refresh")["version"]["value"] is None  # no default: the form asks for it
