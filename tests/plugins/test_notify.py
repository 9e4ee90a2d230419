"""The failure notice's channels, against a real SMTP server (aiosmtpd) and a real HTTP webhook on 127.0.0.1.

The whole path (a failed ci run's on_failure_callback) is in tests/e2e/test_failure_notice.py; here the
channels' own rules: nothing configured sends nothing and raises nothing, one channel down does not stop the
other, and the connection forms a user may write all reach the webhook.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from modelship import notify

LOG_URL = "http://127.0.0.1:8080/dags/release/runs/manual__2026-12-01T03%3A00%3A00/tasks/deploy?try_number=1"


def context(error: BaseException | None) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="release", run_id="manual__2026-12-01T03:00:00", task_id="deploy", log_url=LOG_URL,
                         try_number=1)  # fmt: skip
    return {"ti": ti, "exception": error}


def verdict() -> BaseException:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException("DeploymentFailed: /version answered model v2, expected v3 {{ not a template }}")


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODELSHIP_NOTIFY_EMAIL", "AIRFLOW_CONN_MODELSHIP_SMTP", "AIRFLOW_CONN_MODELSHIP_CHAT"):
        monkeypatch.delenv(name, raising=False)


def test_the_notice_names_the_step_the_verdict_and_the_run() -> None:
    notice = notify.notice_of(context(verdict()))
    assert notice.step == "deploy" and notice.dag_id == "release"
    assert notice.reason.startswith("DeploymentFailed: /version answered model v2")
    assert notice.run_url == "http://127.0.0.1:8080/dags/release/runs/manual__2026-12-01T03%3A00%3A00"
    other = notify.notice_of(context(ConnectionError("registry unreachable")))
    assert other.reason == "ConnectionError: registry unreachable"  # the last error, named by its type


def test_with_nothing_configured_nothing_is_sent_and_nothing_fails(unconfigured, smtp_inbox, chat_webhook) -> None:
    notify.FailureNotice()(context(verdict()))
    assert smtp_inbox.messages == [] and chat_webhook.received == []


def test_recipients_without_an_smtp_connection_send_no_mail(unconfigured, monkeypatch, smtp_inbox) -> None:
    monkeypatch.setenv("MODELSHIP_NOTIFY_EMAIL", "oncall@localhost")
    notify.FailureNotice()(context(verdict()))
    assert smtp_inbox.messages == []


def test_mail_and_chat_both_carry_step_reason_and_link(unconfigured, monkeypatch, smtp_inbox, chat_webhook) -> None:
    monkeypatch.setenv("MODELSHIP_NOTIFY_EMAIL", "oncall@localhost, releases@localhost")
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_SMTP", smtp_inbox.connection())
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_CHAT", chat_webhook.connection())
    notify.FailureNotice()(context(verdict()))

    [mail] = smtp_inbox.messages
    assert smtp_inbox.recipients == [["oncall@localhost", "releases@localhost"]]
    assert mail["Subject"] == "modelship: release failed at deploy (run manual__2026-12-01T03:00:00)"
    html = next(part for part in mail.walk() if part.get_content_type() == "text/html").get_payload(decode=True)
    text = html.decode()
    assert "expected v3 {{ not a template }}" in text  # sent as it is, not rendered as Jinja
    assert LOG_URL.split("/tasks/")[0] in text
    [(path, body)] = chat_webhook.received
    assert path == "/services/T000/B000/secret"
    assert "deploy" in body["text"] and "expected v3" in body["text"] and LOG_URL.split("/tasks/")[0] in body["text"]


def test_a_chat_that_is_down_does_not_stop_the_mail_nor_fail_the_callback(
    unconfigured, monkeypatch, smtp_inbox
) -> None:
    from modelship import net

    monkeypatch.setenv("MODELSHIP_NOTIFY_EMAIL", "oncall@localhost")
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_SMTP", smtp_inbox.connection())
    dead = json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{net.free_port()}/hook"})
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_CHAT", dead)
    monkeypatch.setattr(notify, "WEBHOOK_RETRY", notify.retry.Policy(attempts=2, base=0.1))
    notify.FailureNotice()(context(verdict()))
    assert len(smtp_inbox.messages) == 1


def test_a_teams_workflow_webhook_gets_an_adaptive_card(unconfigured, monkeypatch, chat_webhook) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_CHAT", chat_webhook.connection("workflows/abc", fmt="teams"))
    notify.FailureNotice()(context(verdict()))
    [(path, body)] = chat_webhook.received
    card = body["attachments"][0]["content"]
    assert path == "/workflows/abc" and card["type"] == "AdaptiveCard"
    assert card["actions"][0]["url"] == LOG_URL.split("/tasks/")[0]
    assert any("DeploymentFailed" in block["text"] for block in card["body"])


@pytest.mark.parametrize(
    "conn, url",
    [
        ({"host": "127.0.0.1", "schema": "http", "port": 8099, "password": "hooks/x"}, "http://127.0.0.1:8099/hooks/x"),
        ({"password": "https://hooks.slack.com/services/T/B/X"}, "https://hooks.slack.com/services/T/B/X"),
        ({"host": "https://example.webhook.office.com/webhookb2/abc"}, "https://example.webhook.office.com/webhookb2/abc"),
        ({"host": "hooks.slack.com", "password": "/services/T/B/X"}, "https://hooks.slack.com/services/T/B/X"),
    ],
)
def test_the_webhook_url_comes_from_the_forms_a_connection_may_take(conn: dict[str, Any], url: str) -> None:
    fields = {"conn_id": "modelship_chat", "host": None, "schema": None, "port": None, "password": None, **conn}
    assert notify.webhook_url(SimpleNamespace(**fields)) == url
