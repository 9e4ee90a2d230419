"""Each modelship run's inputs and outputs appear as OpenLineage datasets naming the exact artifact.

The mapping from what a task returns (a modelship.lineage artifact, as JSON with its `kind`) to datasets is
tested directly for every artifact the DAGs return (fast, no Airflow). One real model_refresh run with
`airflow dags test`, the provider's file transport and the extractor configured the way `make up` configures
them, proves the wiring: the events file read back names the model version and its manifest sha256. It runs in
a subprocess because the provider decides at import whether it is enabled, and the rest of the session imports
Airflow unconfigured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attr
import pytest

from modelship.openlineage import git_namespace, lineage_of, store_namespace
from modelship.settings import Settings

DIGEST = "sha256:" + "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_SHA = "cd" * 32


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", "/srv/git/app")
    monkeypatch.setenv("MODELSHIP_MODEL_STORE", "wasb:models")
    monkeypatch.setenv("MODELSHIP_DOCKER_DEPLOY_PORT", "8000")
    monkeypatch.setenv("MODELSHIP_STATE", str(tmp_path))
    return Settings.get()


def names(datasets) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def facet(dataset, key: str = "modelship") -> dict[str, Any]:
    return attr.asdict(dataset.facets[key], filter=lambda a, _: not a.name.startswith("_"))


def test_push_reads_the_commit_and_model_and_writes_the_image_by_digest(settings: Settings) -> None:
    pushed = {
        "kind": "image", "repository": "127.0.0.1:5000/modelship/digits-app", "tag": "0123456789ab-v1",
        "digest": DIGEST, "commit": COMMIT, "model_version": "v1", "model_sha256": MODEL_SHA,
    }  # fmt: skip
    lineage = lineage_of(pushed, settings)
    assert names(lineage.inputs) == [("git:///srv/git/app", COMMIT), ("modelstore://wasb/models", "digits/v1")]
    assert names(lineage.outputs) == [("docker://127.0.0.1:5000", f"modelship/digits-app@{DIGEST}")]
    image = lineage.outputs[0]
    assert image.facets["version"].datasetVersion == DIGEST
    assert image.facets["datasetType"].datasetType == "IMAGE"
    assert facet(image) == {
        "artifact": "image", "digest": DIGEST, "tag": "0123456789ab-v1", "commit": COMMIT, "modelVersion": "v1",
        "sha256": MODEL_SHA, "modelName": None, "accuracy": None, "target": None, "revision": None,
    }  # fmt: skip
    assert lineage.inputs[1].facets["version"].datasetVersion == MODEL_SHA


def test_deploy_reads_the_image_and_writes_the_deployment(settings: Settings) -> None:
    event = {
        "kind": "deployment", "target": "docker", "image_digest": DIGEST,
        "image": f"127.0.0.1:5000/modelship/digits-app@{DIGEST}", "commit": COMMIT, "model_version": "v2",
        "revision": "c0ffee123456",
    }  # fmt: skip
    lineage = lineage_of(event, settings)
    assert names(lineage.inputs) == [("docker://127.0.0.1:5000", f"modelship/digits-app@{DIGEST}")]
    assert names(lineage.outputs) == [("deploy://docker", "127.0.0.1:8000")]
    deployment = facet(lineage.outputs[0])
    assert (deployment["digest"], deployment["commit"], deployment["modelVersion"]) == (DIGEST, COMMIT, "v2")
    assert lineage.outputs[0].facets["version"].datasetVersion == "c0ffee123456"


def test_select_image_reads_the_image_only(settings: Settings) -> None:
    selected = {
        "kind": "release_image", "image": f"127.0.0.1:5000/modelship/digits-app@{DIGEST}", "digest": DIGEST,
        "commit": COMMIT, "model_name": "digits", "model_version": "v1", "model_sha256": MODEL_SHA,
    }  # fmt: skip
    lineage = lineage_of(selected, settings)
    assert names(lineage.inputs) == [("docker://127.0.0.1:5000", f"modelship/digits-app@{DIGEST}")]
    assert lineage.outputs == []


def test_ci_candidate_reads_the_commit_and_the_model(settings: Settings) -> None:
    candidate = {
        "kind": "build", "commit": COMMIT, "model_name": "digits", "model_version": "v3", "model_sha256": MODEL_SHA,
        "tag": "0123456789ab-v3", "repository": "127.0.0.1:5000/modelship/digits-app", "workspace": "/w",
        "already_pushed": None,
    }  # fmt: skip
    lineage = lineage_of(candidate, settings)
    assert names(lineage.inputs) == [("git:///srv/git/app", COMMIT), ("modelstore://wasb/models", "digits/v3")]
    assert lineage.outputs == []


def test_model_refresh_validate_reads_and_promote_writes_the_version(settings: Settings) -> None:
    validated = {"kind": "validated_model", "name": "digits", "version": "v1", "sha256": MODEL_SHA, "accuracy": 0.97,
                 "promoted_before": None}  # fmt: skip
    promoted = {"kind": "model", "name": "digits", "version": "v1", "sha256": MODEL_SHA, "accuracy": 0.97}
    assert names(lineage_of(validated, settings).inputs) == [("modelstore://wasb/models", "digits/v1")]
    out = lineage_of(promoted, settings)
    assert (out.inputs, names(out.outputs)) == ([], [("modelstore://wasb/models", "digits/v1")])
    assert facet(out.outputs[0])["accuracy"] == 0.97


@pytest.mark.parametrize("value", [None, "text", 3, {"unrelated": 1}, ["a"], {"kind": "nope", "commit": COMMIT}])
def test_anything_else_has_no_datasets(settings: Settings, value: Any) -> None:
    lineage = lineage_of(value, settings)
    assert (lineage.inputs, lineage.outputs) == ([], [])


@pytest.mark.parametrize(
    ("repo", "namespace"),
    [
        ("/work/main", "git:///work/main"),
        ("https://user@github.com/org/app.git", "git://github.com/org/app.git"),
        ("git@github.com:org/app.git", "git://github.com/org/app.git"),
    ],
)
def test_git_namespace_drops_scheme_and_user(repo: str, namespace: str) -> None:
    assert git_namespace(repo) == namespace


def test_store_namespace() -> None:
    assert store_namespace("wasb:models") == "modelstore://wasb/models"
    assert store_namespace("local:/var/lib/models/") == "modelstore://local/var/lib/models"


# --- a real run -----------------------------------------------------------------------------------------


def test_model_refresh_run_emits_the_promoted_version_as_an_openlineage_dataset(
    airflow_db: Path, tmp_path: Path
) -> None:
    from devstack.stack import openlineage_environment
    from modelpkg.manifest import manifest_sha256
    from modelship.model_store import LocalModelStore
    from training.train import train_package

    store_dir = tmp_path / "models"
    package = tmp_path / "pkg"
    train_package(package, "v1")
    LocalModelStore(store_dir, cache_dir=tmp_path / "cache").publish(package)
    sha = manifest_sha256(package)
    events_file = tmp_path / "openlineage" / "events.jsonl"

    env = {
        **os.environ,
        **openlineage_environment(events_file),
        "MODELSHIP_STATE": str(tmp_path / "state"),
        "MODELSHIP_MODEL_STORE": f"local:{store_dir}",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    done = subprocess.run(
        [airflow, "dags", "test", "model_refresh", "-c", json.dumps({"version": "v1"})],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert events_file.exists(), f"no OpenLineage events written:\n{done.stderr[-3000:]}"

    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    by_job = {(e["job"]["name"], e["eventType"]): e for e in events}
    assert all(e["job"]["namespace"] == "modelship" for e in events)
    promote = by_job[("model_refresh.promote", "COMPLETE")]
    validate = by_job[("model_refresh.validate", "COMPLETE")]
    namespace = f"modelstore://local/{str(store_dir).strip('/')}"
    [output] = promote["outputs"]
    assert (output["namespace"], output["name"]) == (namespace, "digits/v1")
    assert output["facets"]["version"]["datasetVersion"] == sha
    assert output["facets"]["modelship"]["sha256"] == sha
    assert output["facets"]["modelship"]["modelVersion"] == "v1"
    assert [(i["namespace"], i["name"]) for i in validate["inputs"]] == [(namespace, "digits/v1")]
