"""The ci DAG, end to end with dag.test(): real checkout, app tests, Azurite, Docker engine, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.lineage import LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.registry import RegistryClient
from tests.e2e.pipeline import asset_events, clone_with_commit, run_dag, task_states, why

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

REPOSITORY = "modelship/digits-app"


def registry_client() -> RegistryClient:
    return RegistryClient.from_connection("modelship_registry")


@pytest.fixture(scope="module")
def first_run(ci_v1):
    return ci_v1


def test_ci_pushes_an_image_whose_labels_and_asset_event_name_commit_and_model(first_run) -> None:
    commit, dag_run = first_run
    assert str(dag_run.state) == "success", why(dag_run)
    tag = f"{commit[:12]}-v1"
    registry = registry_client()
    digest = registry.digest(REPOSITORY, tag)
    assert digest and digest.startswith("sha256:")
    labels = registry.labels(REPOSITORY, digest)
    assert labels[LABEL_REVISION] == commit
    assert labels[LABEL_MODEL_VERSION] == "v1"
    event = asset_events("image")[-1]
    assert event["digest"] == digest
    assert event["commit"] == commit and event["tag"] == tag
    assert event["model_version"] == "v1" and event["model_sha256"] == labels[LABEL_MODEL_SHA256]


def test_a_second_run_of_the_same_commit_and_model_pushes_nothing_and_announces_the_image(first_run) -> None:
    commit, _ = first_run
    events_before = asset_events("image")
    tags_before = registry_client().tags(REPOSITORY)
    dag_run = run_dag("ci", {"commit": commit})
    states = task_states(dag_run)
    assert str(dag_run.state) == "success"
    assert states["announce"] == "success" and states["checkout"] == "skipped", states
    assert states["build"] == "skipped" and states["push"] == "skipped", states
    assert registry_client().tags(REPOSITORY) == tags_before
    # Announced again, as it is: the same digest, not rebuilt, nothing pushed (a model rollback flows on).
    [announced] = asset_events("image")[len(events_before):]
    pushed = [e for e in events_before if e["commit"] == commit and e["model_version"] == "v1"][-1]
    assert announced["digest"] == pushed["digest"] and announced["rebuilt"] is False
    assert (announced["layers_pushed"], announced["bytes_pushed"]) == (0, 0)
    assert pushed["rebuilt"] is True and pushed["layers_pushed"] > 0 and pushed["bytes_pushed"] > 0


def _assert_red_and_nothing_pushed(dag_run, failed_task: str, commit: str) -> None:
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert states[failed_task] == "failed", states
    assert states["push"] in ("upstream_failed", "skipped"), states
    assert registry_client().digest(REPOSITORY, f"{commit[:12]}-v1") is None


def test_a_commit_whose_app_tests_fail_ends_red_and_pushes_nothing(
    first_run, pipeline_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /healthz stops answering "ok": the app's own tests catch it.
    commit = clone_with_commit(tmp_path / "src", "app/classifier/routes.py", lambda s: s.replace('"ok"', '"not ok"', 1))
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(tmp_path / "src"))
    _assert_red_and_nothing_pushed(run_dag("ci", {"commit": commit}), "test", commit)


def test_an_image_that_fails_its_smoke_test_ends_red_and_pushes_nothing(
    first_run, pipeline_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Dockerfile starts a server that does not exist: the app's tests pass, the container does not.
    commit = clone_with_commit(
        tmp_path / "src", "app/Dockerfile", lambda s: s + '\nCMD ["python3", "-c", "raise SystemExit(3)"]\n'
    )
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(tmp_path / "src"))
    _assert_red_and_nothing_pushed(run_dag("ci", {"commit": commit}), "smoke_test", commit)
    import docker

    client = docker.DockerClient(base_url=pipeline_env["MODELSHIP_DOCKER_HOST"])
    assert [c.name for c in client.containers.list(all=True) if c.name.startswith("modelship-smoke")] == []


def test_a_tampered_model_ends_red_and_pushes_nothing(
    first_run, pipeline_env, tmp_path: Path, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.storage.blob import BlobServiceClient

    from modelship.model_store import open_store

    # A new commit (so the image is not already pushed) and a promoted model whose bytes were altered.
    commit = clone_with_commit(tmp_path / "src", "README.md", lambda s: s + "\n")
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(tmp_path / "src"))
    monkeypatch.setenv("MODELSHIP_MODEL_STORE", "wasb:e2e-tampered")
    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path / "cache"))  # no clean copy cached from before
    store = open_store()
    store.publish(trained["v1"])
    store.promote("digits", "v1", "production")
    import json
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_MODELSHIP_BLOB"])["extra"]["connection_string"]
    blob = BlobServiceClient.from_connection_string(conn).get_blob_client(
        "e2e-tampered", "digits/versions/v1/model.onnx"
    )
    data = bytearray(blob.download_blob().readall())
    data[len(data) // 2] ^= 0xFF
    blob.upload_blob(bytes(data), overwrite=True)
    _assert_red_and_nothing_pushed(run_dag("ci", {"commit": commit}), "fetch_model", commit)
