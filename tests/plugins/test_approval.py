"""The approval gate's answers, as Airflow hands them to the operator when the task resumes.

A person's answer through the UI is in tests/e2e/test_approval_gate.py; the timeout is resolved by the
scheduler's sweep (with the operator's default, Reject, and no responder), which dag.test() does not run,
so its event is handed to execute_complete here, as the sweep builds it (HITLDetail.as_resume_event_payload).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pendulum
import pytest

from modelship import approval
from modelship.lineage import Approval, ReleaseImage

IMAGE = ReleaseImage(image="127.0.0.1:5000/modelship/digits-app@sha256:" + "ab" * 32, digest="sha256:" + "ab" * 32,
                     commit="0123456789abcdef" * 2 + "01234567", model_name="digits", model_version="v3",
                     model_sha256="cd" * 32, why="the desired state")  # fmt: skip


def gate(monkeypatch: pytest.MonkeyPatch, targets: str = "kubernetes") -> approval.ReleaseApproval:
    from airflow.sdk import DAG

    monkeypatch.setenv("MODELSHIP_APPROVAL_TARGETS", targets)
    with DAG("release_gate_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        return approval.ReleaseApproval(task_id="approve", timeout=3600)


def context(target: str) -> dict:
    ti = SimpleNamespace(xcom_pull=lambda task_ids: IMAGE.as_dict(), task_id="approve", map_index=-1)
    return {"params": {"target": target}, "ti": ti, "task_instance": ti}


def event(choice: str, who: str | None, reason: str = "", timedout: bool = False) -> dict:
    return {"chosen_options": [choice], "params_input": {"reason": reason} if reason else {},
            "responded_at": datetime(2026, 12, 1, 3, 0, tzinfo=UTC),
            "responded_by_user": {"id": who, "name": who} if who else None, "timedout": timedout}  # fmt: skip


def test_a_target_without_the_gate_passes_at_once(monkeypatch) -> None:
    answer = gate(monkeypatch).execute(context("docker"))
    assert Approval.from_dict(answer) == Approval("docker", IMAGE.image, required=False, approved=True)
    assert approval.approver(Approval.from_dict(answer)) == ""


def test_an_approval_names_who_when_and_why(monkeypatch) -> None:
    answered = gate(monkeypatch).execute_complete(context("kubernetes"), event("Approve", "ana", "ok"))
    answer = Approval.from_dict(answered)
    assert (answer.approved, answer.by, answer.reason) == (True, "ana", "ok")
    assert answer.at == "2026-12-01T03:00:00+00:00" and approval.approver(answer) == "ana"


def test_a_rejection_skips_naming_who_and_why(monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException) as skipped:
        gate(monkeypatch).execute_complete(context("kubernetes"), event("Reject", "bo", "the sale is on"))
    assert str(skipped.value).startswith(f"bo rejected the release of {IMAGE.image} (commit 0123456789ab, model v3)")
    assert "the sale is on. Nothing was deployed; what serves keeps serving." in str(skipped.value)


def test_no_answer_in_time_is_a_rejection_by_nobody(monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match=r"nobody approved the release of .* to kubernetes within 1 h\."):
        gate(monkeypatch).execute_complete(context("kubernetes"), event("Reject", None, timedout=True))
