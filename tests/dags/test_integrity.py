"""Every file in dags/ imports into a DagBag cleanly, cheaply and safely.

Modelled on Airflow's own example-DAG test and Astronomer's template: ids come from the files, each DAG
has an owner, tags and retries with backoff on its tasks, and parsing does no I/O (no connection or
Variable lookups). The same checks run against a deliberately broken file to prove they can fail.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from unittest import mock

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"ci", "release", "model_refresh", "maintenance"}


def problems(folder: Path) -> list[str]:
    """Everything wrong with the DAG files in `folder`, as readable sentences (empty: all good)."""
    from airflow.dag_processing.dagbag import DagBag

    found: list[str] = []
    # Parsing must not look up connections or Variables: that is I/O at every scheduler parse.
    with (
        mock.patch(
            "airflow.sdk.bases.hook.BaseHook.get_connection", side_effect=AssertionError("connection lookup")
        ),
        mock.patch("airflow.sdk.Variable.get", side_effect=AssertionError("Variable lookup")),
    ):
        bag = DagBag(dag_folder=str(folder), safe_mode=False)
    for path, error in bag.import_errors.items():
        found.append(f"{Path(path).name} does not import: {error.strip().splitlines()[-1]}")
    for dag_id, dag in bag.dags.items():
        if not dag.tags:
            found.append(f"{dag_id} has no tags")
        if dag.owner in ("", "airflow"):
            found.append(f"{dag_id} has no owner of its own (owner={dag.owner!r})")
        if not dag.doc_md:
            found.append(f"{dag_id} has no doc_md")
        for task in dag.tasks:
            if not task.retries or task.retries < 1:
                found.append(f"{dag_id}.{task.task_id} has no retries")
            elif not task.retry_exponential_backoff:
                found.append(f"{dag_id}.{task.task_id} retries without exponential backoff")
            if task.execution_timeout is None or task.execution_timeout > timedelta(hours=2):
                found.append(f"{dag_id}.{task.task_id} has no execution_timeout (or one over 2 h)")
    return found


def test_every_dag_file_imports_with_owner_tags_and_retries() -> None:
    assert problems(DAGS) == []


def test_the_product_dags_are_there() -> None:
    from airflow.dag_processing.dagbag import DagBag

    assert set(DagBag(dag_folder=str(DAGS), safe_mode=False).dags) >= EXPECTED


def test_the_checks_fail_for_a_broken_dag_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("from airflow.sdk import dag\n\n@dag(\ndef oops(:\n")
    (tmp_path / "careless.py").write_text(
        "from airflow.sdk import dag, task\nimport pendulum\n\n"
        "@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1))\n"
        "def careless():\n    @task\n    def step():\n        pass\n    step()\n\ncareless()\n"
    )
    (tmp_path / "nosy.py").write_text(
        "from airflow.sdk import dag, Variable\nimport pendulum\nVariable.get('x')\n\n"
        "@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1))\ndef nosy():\n    pass\n\nnosy()\n"
    )
    found = problems(tmp_path)
    assert any(p.startswith("broken.py does not import") for p in found), found
    assert any("nosy.py does not import" in p and "Variable lookup" in p for p in found), found
    assert "careless has no tags" in found
    assert "careless.step has no retries" in found


def _release(monkeypatch, approval_targets: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MODELSHIP_APPROVAL_TARGETS", approval_targets)
    bag = DagBag(dag_folder=str(DAGS / "release.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["release"]


def test_every_task_sends_a_failure_notice_when_it_fails_for_good() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from modelship.notify import FailureNotice

    for dag in DagBag(dag_folder=str(DAGS), safe_mode=False).dags.values():
        for task in dag.tasks:
            callbacks = task.on_failure_callback or []
            assert any(isinstance(c, FailureNotice) for c in callbacks), f"{dag.dag_id}.{task.task_id}"


def test_without_an_approval_target_the_release_has_no_gate(monkeypatch) -> None:
    dag = _release(monkeypatch, "")
    assert sorted(dag.task_ids) == ["deploy", "quarantine", "record", "select_image"]
    assert dag.get_task("deploy").upstream_task_ids == {"select_image"}


def test_with_an_approval_target_deploy_waits_for_airflows_approval_operator(monkeypatch, tmp_path: Path) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = _release(monkeypatch, "kubernetes")
    gate = dag.get_task("approve")
    assert isinstance(gate, ApprovalOperator)
    assert gate.upstream_task_ids == {"select_image"} and dag.get_task("deploy").upstream_task_ids == {
        "select_image", "approve"}  # fmt: skip
    assert gate.defaults == ["Reject"] and gate.response_timeout == timedelta(hours=24)
    assert list(gate.params) == ["reason"]  # the form's one field; the DAG's own params are not asked again
    # The gated DAG meets the same rules as every other (owner, retries with backoff, timeouts).
    (tmp_path / "release.py").symlink_to(DAGS / "release.py")
    assert problems(tmp_path) == []


def test_releases_run_one_at_a_time(monkeypatch) -> None:
    """Two releases at once would race each other's swap (docker) or rollout (kubernetes) on the same target."""
    assert _release(monkeypatch, "").max_active_runs == 1
