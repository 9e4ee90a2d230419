"""OpenLineage events of real ci and release runs (model_refresh's: tests/lineage), read back from the
provider's file transport as `make up` configures it: they name the commit and model ci read, the image it
announced, and the release's input image and output target. `airflow dags test` in a subprocess, because the
provider decides at import whether it is enabled, and this session imports Airflow unconfigured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelship import net

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]


def test_real_ci_and_release_runs_name_the_commit_model_image_and_deployment(
    pipeline_env, ci_v1, registry, docker_client, tmp_path: Path
) -> None:
    from devstack.stack import openlineage_environment

    commit, first = ci_v1
    assert str(first.state) == "success"
    events_file = tmp_path / "openlineage" / "events.jsonl"
    port = str(net.free_port())  # a docker target of its own: the release stories' port stays theirs
    env = {**os.environ, **openlineage_environment(events_file), "MODELSHIP_DOCKER_DEPLOY_PORT": port}
    airflow = str(Path(sys.executable).parent / "airflow")
    # ci finds HEAD × the promoted model already pushed (ci_v1) and announces it; release deploys an image.
    try:
        for dag_id, conf in (("ci", {"commit": commit}), ("release", {"target": "docker"})):
            done = subprocess.run([airflow, "dags", "test", dag_id, "-c", json.dumps(conf)], env=env,
                                  capture_output=True, text=True, timeout=900)  # fmt: skip
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
            container.remove(force=True)
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = {e["job"]["name"]: e for e in events if e["eventType"] == "COMPLETE"}

    [image] = complete["ci.announce"]["outputs"]
    assert image["namespace"] == f"docker://{registry.address}"
    assert image["facets"]["modelship"]["commit"] == commit
    model = f"digits/{image['facets']['modelship']['modelVersion']}"
    assert [i["name"] for i in complete["ci.resolve"]["inputs"]] == [commit, model]

    deployed = complete["release.deploy"]
    [source] = deployed["inputs"]
    assert source["namespace"] == f"docker://{registry.address}" and source["name"].startswith("modelship/digits-app@")
    [target] = deployed["outputs"]
    assert (target["namespace"], target["name"]) == ("deploy://docker", f"127.0.0.1:{port}")
    assert target["facets"]["modelship"]["digest"] == source["name"].split("@", 1)[1]
