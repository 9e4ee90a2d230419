"""The compose stack starts, parses the DAGs, and carries the whole flow on both Celery workers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.distributed.conftest import AirflowAPI

pytestmark = pytest.mark.needs_stack


def test_the_three_dags_parse_in_the_stack_without_import_errors(api: AirflowAPI) -> None:
    dags = {d["dag_id"] for d in api.get("/dags", limit=100)["dags"]}
    assert {"ci", "release", "model_refresh"} <= dags, dags
    assert api.get("/importErrors")["import_errors"] == []


def test_the_whole_flow_runs_green_through_the_rest_api(api: AirflowAPI, flow: dict[str, Any]) -> None:
    for dag_id, run_id in flow["runs"]:
        run = api.run(dag_id, run_id)
        assert run["state"] == "success", (dag_id, api.states(dag_id, run_id))
    # ci was started by model_refresh's `model` Asset event, not by hand.
    assert flow["ci"]["run_type"] == "asset_triggered", flow["ci"]
    states = api.states("ci", flow["ci"]["dag_run_id"])
    assert states["push"] == "success" and states["cleanup"] == "success", states


def test_task_instances_of_the_flow_ran_on_both_workers(api: AirflowAPI, flow: dict[str, Any]) -> None:
    hosts = {
        ti["hostname"]
        for dag_id, run_id in flow["runs"]
        for ti in api.task_instances(dag_id, run_id)
        if ti["state"] == "success"
    }
    assert hosts == {"worker-1", "worker-2"}, hosts


def test_the_deployed_app_serves_the_model_the_flow_promoted(stack, flow: dict[str, Any]) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.deploy}/version", timeout=10) as response:
        version = json.load(response)
    assert version["model"]["version"] == "v1"
    deployed = flow["release"]
    assert deployed["state"] == "success"
