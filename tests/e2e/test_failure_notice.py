"""A failed ci run sends its failure notice, end to end: the ci DAG's real tasks (dag.test) run a commit whose
app tests fail; Airflow calls the tasks' on_failure_callback (modelship.notify.FailureNotice), and a real SMTP
server (aiosmtpd) and a chat webhook (a local HTTP server), both on 127.0.0.1, receive which step failed, the
verdict, and the link to the run."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.pipeline import clone_with_commit, run_dag, task_states

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]


def test_a_red_ci_run_mails_and_posts_the_failed_step_its_verdict_and_the_run(
    promoted_v1, pipeline_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_inbox, chat_webhook
) -> None:
    # /healthz stops answering "ok": the app's own tests catch it, and ci's `test` step fails with a verdict.
    commit = clone_with_commit(tmp_path / "src", "app/classifier/routes.py", lambda s: s.replace('"ok"', '"not ok"', 1))
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(tmp_path / "src"))
    monkeypatch.setenv("MODELSHIP_NOTIFY_EMAIL", "oncall@localhost")
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_SMTP", smtp_inbox.connection())
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_CHAT", chat_webhook.connection())

    run = run_dag("ci", {"commit": commit})
    states = task_states(run)
    assert str(run.state) == "failed" and states["test"] == "failed", states

    deadline = time.monotonic() + 30  # the SMTP server hands each mail over on its own thread
    while not smtp_inbox.messages and time.monotonic() < deadline:
        time.sleep(0.2)
    run_link = f"/dags/ci/runs/{urllib.parse.quote(run.run_id)}"
    [mail] = smtp_inbox.messages  # one notice: the steps after `test` never ran, so they did not fail
    assert mail["Subject"] == f"modelship: ci failed at test (run {run.run_id})"
    body = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "AppTestsFailed: the app&#x27;s tests failed" in body, body
    assert "test_health" in body or "healthz" in body, body  # the failing test, by name
    assert f'{run_link}"' in body, body

    [(_, posted)] = chat_webhook.received
    assert "ci failed at test" in posted["text"] and "AppTestsFailed" in posted["text"], posted
    assert run_link in posted["text"]
