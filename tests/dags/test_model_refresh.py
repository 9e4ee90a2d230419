"""model_refresh promotes a version only if it passes its gates, against the alias state it validated,
and announces the promotion as a `model` Asset event carrying the version's identity.

The gates themselves are tested directly (fast, no Airflow run); a few whole runs with `dag.test()`
against real Azurite prove the wiring: params → validate → promote → Asset event.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack import components
from modelpkg.manifest import manifest_sha256, read_manifest, write_manifest
from modelship.lineage import ValidatedModel
from modelship.model_store import BlobModelStore, LocalModelStore, ModelStore
from modelship.tasks import step
from modelship.validation import GateFailed, run_promote, run_validate, validate_model

DAGS = Path(__file__).resolve().parents[2] / "dags"
CONN_ID = "modelship_blob"


def relabelled(package: Path, dest: Path, version: str, accuracy: float) -> Path:
    """A copy of a package as another version whose manifest records a different accuracy."""
    shutil.copytree(package, dest)
    old = read_manifest(dest)
    (dest / "model.json").unlink()
    extra = {k: v for k, v in old.items() if k not in ("name", "version", "created_at", "framework", "input",
                                                         "metrics", "files")}  # fmt: skip
    write_manifest(
        dest, name=old["name"], version=version, framework=old["framework"], input_spec=old["input"],
        metrics={**old["metrics"], "accuracy": accuracy}, extra=extra,
    )  # fmt: skip
    return dest


@pytest.fixture
def local_store(tmp_path: Path) -> ModelStore:
    return LocalModelStore(tmp_path / "store", cache_dir=tmp_path / "cache")


def params(**overrides: Any) -> dict[str, Any]:
    return {"model_name": "digits", "min_accuracy": 0.95, "must_beat_promoted": False, "alias": "production",
            **overrides}  # fmt: skip


# --- the gates ------------------------------------------------------------------------------------------


def test_a_good_model_passes_and_reports_its_identity(local_store: ModelStore, trained: dict[str, Path]) -> None:
    local_store.publish(trained["good"])
    result = validate_model(local_store, "digits", "v1", 0.95, must_beat_promoted=True, alias="production")
    assert result == ValidatedModel(
        name="digits",
        version="v1",
        sha256=manifest_sha256(trained["good"]),
        accuracy=read_manifest(trained["good"])["metrics"]["accuracy"],  # measured again, same number
        promoted_before=None,
    )


def test_the_minimum_accuracy_gate_names_itself_and_the_margin(
    local_store: ModelStore, trained: dict[str, Path]
) -> None:
    local_store.publish(trained["bad"])
    accuracy = read_manifest(trained["bad"])["metrics"]["accuracy"]
    with pytest.raises(GateFailed) as failed:
        validate_model(local_store, "digits", "bad1", 0.95, must_beat_promoted=False, alias="production")
    assert str(failed.value) == (
        f"model digits bad1: accuracy {accuracy:.4f} is below the minimum 0.9500 by {0.95 - accuracy:.4f}"
    )


def test_must_beat_promoted_compares_with_the_promoted_manifest(
    local_store: ModelStore, trained: dict[str, Path], tmp_path: Path
) -> None:
    accuracy = read_manifest(trained["good"])["metrics"]["accuracy"]
    local_store.publish(relabelled(trained["good"], tmp_path / "v0", "v0", accuracy=0.999))
    local_store.promote("digits", "v0")
    local_store.publish(trained["good"])
    with pytest.raises(GateFailed) as failed:
        validate_model(local_store, "digits", "v1", 0.95, must_beat_promoted=True, alias="production")
    assert str(failed.value) == (
        f"model digits v1: accuracy {accuracy:.4f} does not beat promoted v0 (0.9990) by {accuracy - 0.999:.4f}"
    )
    # Off by default, and re-validating the promoted version itself never fails for not beating itself.
    assert validate_model(local_store, "digits", "v1", 0.95, False, "production").promoted_before == "v0"
    local_store.promote("digits", "v1")
    assert validate_model(local_store, "digits", "v1", 0.95, True, "production").promoted_before == "v1"


def test_task_bodies_fail_without_retry_on_verdicts(local_store: ModelStore, trained: dict[str, Path]) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    # The task bodies as the DAG wraps them: modelship.tasks.step maps verdicts to a failure without retry.
    validate, promote = step(run_validate), step(run_promote)
    with pytest.raises(AirflowFailException, match=r"param 'version' is required"):
        validate(params(version=""), store=local_store)
    with pytest.raises(AirflowFailException, match=r"ModelNotFound: model digits has no version or alias 'v1'"):
        validate(params(version="v1"), store=local_store)

    local_store.publish(trained["good"])
    validated = validate(params(version="v1"), store=local_store)  # JSON, as it travels in XCom
    local_store.publish(trained["bad"])
    local_store.promote("digits", "bad1")  # someone moves the alias between validate and promote
    with pytest.raises(AirflowFailException, match=r"alias digits:production moved from nothing to bad1"):
        promote(validated, alias="production", store=local_store)
    assert local_store.read_alias("digits", "production")["version"] == "bad1"


# --- whole runs -----------------------------------------------------------------------------------------


@pytest.fixture
def blob_store(
    azurite: components.Azurite, airflow_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ModelStore:
    """Point the DAG (through Settings and the modelship_blob connection) at a fresh Azurite container."""
    container = f"refresh-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}),
    )
    monkeypatch.setenv("MODELSHIP_WASB_CONN_ID", CONN_ID)
    monkeypatch.setenv("MODELSHIP_MODEL_STORE", f"wasb:{container}")
    monkeypatch.setenv("MODELSHIP_STATE", str(tmp_path / "state"))
    return BlobModelStore(container, CONN_ID)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "model_refresh.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["model_refresh"]


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def model_events(run_id: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "model", AssetEvent.source_run_id == run_id)
        )
        return [dict(extra) for extra in session.scalars(query)]


@pytest.mark.azurite
def test_a_good_version_is_promoted_and_announced(dag, blob_store: ModelStore, trained: dict[str, Path]) -> None:
    blob_store.publish(trained["good"])
    run = dag.test(run_conf={"version": "v1"})
    assert str(run.state) == "success", states(run)
    record = blob_store.read_alias("digits", "production")
    assert record["version"] == "v1" and record["previous"] is None
    sha = manifest_sha256(trained["good"])
    assert record["manifest_sha256"] == sha
    [extra] = model_events(run.run_id)
    assert {k: extra[k] for k in ("name", "version", "sha256", "accuracy")} == {
        "name": "digits",
        "version": "v1",
        "sha256": sha,
        "accuracy": read_manifest(trained["good"])["metrics"]["accuracy"],
    }


@pytest.mark.azurite
def test_a_version_below_the_gate_fails_the_run_and_leaves_the_alias(
    dag, blob_store: ModelStore, trained: dict[str, Path], capfd: pytest.CaptureFixture[str], caplog
) -> None:
    blob_store.publish(trained["good"])
    blob_store.publish(trained["bad"])
    before = blob_store.promote("digits", "v1")
    run = dag.test(run_conf={"version": "bad1", "min_accuracy": 0.95})
    assert str(run.state) == "failed"
    assert states(run) == {"validate": "failed", "promote": "upstream_failed"}
    assert blob_store.read_alias("digits", "production") == before
    assert model_events(run.run_id) == []
    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert "GateFailed: model digits bad1: accuracy" in logs and "is below the minimum 0.9500 by" in logs


@pytest.mark.parametrize("conf", [{}, {"version": ""}], ids=["missing", "empty"])
def test_a_run_without_a_version_is_refused_naming_the_param(dag, airflow_db: Path, conf: dict) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    # Refused when the run is created (UI form, REST API, dag.test alike): no task ever starts.
    with pytest.raises(ParamValidationError, match=r"Invalid input for param version"):
        dag.test(run_conf=conf)
