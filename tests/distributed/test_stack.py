"""The compose stack starts, parses the DAGs, and carries the whole flow on both Celery workers."""

from __future__ import annotations

import os
from typing import Any

import pytest

from modelship.airflow_api import AirflowAPI
from tests.distributed.conftest import image_events

pytestmark = pytest.mark.needs_stack


def test_the_three_dags_parse_in_the_stack_without_import_errors(api: AirflowAPI) -> None:
    dags = {d.dag_id for d in api.dags()}
    assert {"ci", "release", "model_refresh"} <= dags, dags
    assert api.import_errors() == []


def test_a_worker_renders_the_kubernetes_release_with_the_images_kubectl(stack) -> None:
    """The release DAG's kubernetes target from a worker: the image's kubectl renders the overlay the settings
    name (k8s/ is mounted), and the target pins the image by digest and writes the lineage annotations."""
    import json

    from modelship.lineage import ANN_COMMIT, ANN_MODEL_VERSION

    image = "registry.example/modelship/digits-app@sha256:" + "0" * 64
    script = (
        "import json\n"
        "from modelship.deploy import get_target\n"
        "from modelship.settings import Settings\n"
        "target = get_target('kubernetes', Settings.get())\n"
        f"objects = target.render(target.overlay_dir, {image!r}, {{'commit': 'a' * 40, 'model_version': 'v7'}})\n"
        "print(json.dumps(objects))\n"
    )
    done = stack.container("airflow-worker-1").exec_run(["python", "-c", script], demux=True)
    stdout, stderr = (part or b"" for part in done.output)
    assert done.exit_code == 0, stderr.decode()[-3000:]
    objects = json.loads(stdout)
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == image
    assert template["metadata"]["annotations"][ANN_COMMIT] == "a" * 40
    assert template["metadata"]["annotations"][ANN_MODEL_VERSION] == "v7"
    assert {o["kind"] for o in objects} >= {"Deployment", "Service"}


def test_the_whole_flow_runs_green_through_the_rest_api(api: AirflowAPI, flow: dict[str, Any]) -> None:
    for dag_id, run_id in flow["runs"]:
        run = api.run(dag_id, run_id)
        assert run.state == "success", (dag_id, api.task_states(dag_id, run_id))
    # ci was started by model_refresh's `model` Asset event, not by hand.
    assert flow["ci"].run_type == "asset_triggered", flow["ci"]
    states = api.task_states("ci", flow["ci"].dag_run_id)
    assert states["push"] == "success" and states["cleanup"] == "success", states


def test_the_first_nightly_release_with_nothing_built_yet_is_skipped_not_red(api: AirflowAPI, flow) -> None:
    # catchup=False: the newest nightly slot gets a run as soon as the DAG appears, before ci built anything.
    scheduled = [r for r in api.runs("release", limit=100) if r.run_type == "scheduled"]
    assert scheduled, api.runs("release", limit=100)
    first = scheduled[-1]  # runs() lists the newest first
    assert first.state == "success", api.task_states("release", first.dag_run_id)
    assert api.task_states("release", first.dag_run_id) == dict.fromkeys(
        ("select_image", "deploy", "record", "quarantine"), "skipped"
    )


def test_task_instances_of_the_flow_ran_on_both_workers(api: AirflowAPI, flow: dict[str, Any]) -> None:
    hosts = {
        ti.hostname
        for dag_id, run_id in flow["runs"]
        for ti in api.tasks(dag_id, run_id)
        if ti.state == "success"
    }
    assert hosts == {"worker-1", "worker-2"}, hosts


def test_the_deployed_app_serves_the_model_the_flow_promoted(stack, flow: dict[str, Any]) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.deploy}/version", timeout=10) as response:
        version = json.load(response)
    assert version["model"]["version"] == "v1"
    deployed = flow["release"]
    assert deployed.state == "success"


def test_the_demo_tells_the_whole_story_on_this_stack(stack, host_env: dict[str, str], flow: dict[str, Any]) -> None:
    """`make demo` against the compose stack: `python -m devstack demo` with the environment `up-distributed`
    writes for the host (Airflow's URL and password file included). Two more model versions go through
    model_refresh → ci → release → /score → status, and the demo names the hosts the tasks ran on: both workers."""
    import subprocess
    import sys

    assert host_env["MODELSHIP_AIRFLOW_URL"] == f"http://127.0.0.1:{stack.ports.api}"
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "demo"], capture_output=True, text=True, timeout=1800, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [last] = [line for line in done.stdout.strip().splitlines() if line.startswith("==> demo complete")]
    assert last.endswith("tasks ran on worker-1, worker-2"), last


def test_the_azure_stand_ins_are_compose_services_holding_what_the_flow_made(
    stack, api: AirflowAPI, host_env: dict[str, str], flow: dict[str, Any]
) -> None:
    """The registry (ACR) and Azurite (storage account) the flow used are the compose file's services, healthy,
    unprivileged, and they hold its results: the pushed image, behind auth, and the promoted model."""
    import requests

    from modelship.model_store import open_store
    from modelship.registry import RegistryClient
    from modelship.settings import Settings

    for service in ("registry", "azurite"):
        container = stack.container(service)
        container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "healthy", (service, container.attrs["State"])
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        assert uid.isdigit() and uid != "0", (service, uid)

    registry = stack.stack.registry
    assert requests.get(f"http://{registry.address}/v2/", timeout=10).status_code == 401  # no anonymous access
    [event] = image_events(api, flow["ci"].dag_run_id)
    client = RegistryClient(registry.address, registry.username, registry.password)
    try:
        assert client.digest(event["repository"].split("/", 1)[1], event["tag"]) == event["digest"]
    finally:
        client.close()

    settings = Settings.get()
    store = open_store()  # host_env: the stack's Azurite
    versions = {v["version"] for v in store.list_versions(settings.model_name)}
    promoted = store.read_alias(settings.model_name, settings.model_alias)
    assert "v1" in versions and promoted and promoted["version"] in versions, (versions, promoted)
