"""Failure notices: when a ci, release or model_refresh run fails, say which step failed, why, and where.

`FailureNotice` is an Airflow notifier (airflow.sdk.BaseNotifier) set as every task's on_failure_callback
(modelship.tasks.DAG_DEFAULT_ARGS). Airflow calls it once a task has failed for good: a verdict at once, any
other error once its retries are spent. The notice names the DAG, the run, the step, the reason (the
verdict, or the last error) and links to the run in the Airflow UI. It goes to every channel configured:

- e-mail: the SMTP connection MODELSHIP_SMTP_CONN_ID (default `modelship_smtp`, type smtp; its extra
  `from_email` is the sender) to the recipients in MODELSHIP_NOTIFY_EMAIL, through the smtp provider's
  SmtpNotifier;
- chat: the http connection MODELSHIP_CHAT_CONN_ID (default `modelship_chat`): an incoming webhook of Slack
  or Microsoft Teams (see `webhook_url`; extra {"format": "teams"} for a Teams workflow webhook).

Nothing configured: nothing is sent and nothing fails. A channel that cannot be reached is logged, never
raised: a notice must not change the run's outcome, nor keep the other channel from hearing about it.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from modelship import retry
from modelship.settings import Settings

log = logging.getLogger(__name__)
REASON_LINES = 20  # of a long error (a test report, a traceback's message): enough to see what failed
WEBHOOK_RETRY = retry.DEFAULT  # a chat service's hiccup (5xx, 429, a reset) is retried with backoff


@dataclass(frozen=True)
class Notice:
    """What a failure notice says, whatever the channel."""

    dag_id: str
    run_id: str
    step: str
    reason: str
    run_url: str
    step_url: str
    try_number: int = 1

    @property
    def subject(self) -> str:
        return f"modelship: {self.dag_id} failed at {self.step} (run {self.run_id})"

    @property
    def text(self) -> str:
        return (
            f"The {self.dag_id} run {self.run_id} failed at step {self.step} (try {self.try_number}).\n\n"
            f"Why: {self.reason}\n\nRun: {self.run_url}\nStep log: {self.step_url}\n"
        )

    @property
    def html(self) -> str:
        e = html.escape
        return (
            f"<p>The <b>{e(self.dag_id)}</b> run <code>{e(self.run_id)}</code> failed at step "
            f"<b>{e(self.step)}</b> (try {self.try_number}).</p>"
            f"<p>Why:</p><pre>{e(self.reason)}</pre>"
            f'<p>Run: <a href="{e(self.run_url)}">{e(self.run_url)}</a><br>'
            f'Step log: <a href="{e(self.step_url)}">{e(self.step_url)}</a></p>'
        )


def notice_of(context: Any) -> Notice:
    """The notice for the failed task in an Airflow callback context."""
    ti = context["ti"]
    error = context.get("exception")
    if error is None:
        reason = "no error was handed to the callback (see the step's log)"
    else:
        # A verdict arrives as AirflowFailException("<Verdict>: <message>"): its text is the reason. Anything
        # else is the last error the step raised, named by its type.
        reason = str(error).strip() or type(error).__name__
        if type(error).__name__ not in ("AirflowFailException", "AirflowException"):
            reason = f"{type(error).__name__}: {reason}"
        lines = reason.splitlines()
        if len(lines) > REASON_LINES:
            reason = "\n".join([*lines[:REASON_LINES], f"… ({len(lines) - REASON_LINES} more lines in the log)"])
    step_url = ti.log_url
    run_url = step_url.split(f"/tasks/{ti.task_id}", 1)[0]
    return Notice(dag_id=ti.dag_id, run_id=ti.run_id, step=ti.task_id, reason=reason, run_url=run_url,
                  step_url=step_url, try_number=ti.try_number or 1)  # fmt: skip


class FailureNotice(BaseNotifier):
    """on_failure_callback of every modelship task: the notice to e-mail and chat, whichever are configured."""

    def notify(self, context: Any) -> None:
        settings = Settings.get()
        notice = notice_of(context)
        outcome = {}
        for channel, send in (("e-mail", send_email), ("chat", send_chat)):
            try:
                outcome[channel] = "sent" if send(notice, settings, context) else "not configured"
            except Exception as exc:  # one channel down must not hide the failure from the other
                outcome[channel] = "FAILED"
                log.error("could not send the failure notice by %s: %s", channel, retry.first_line(exc))
        log.info("failure notice for %s.%s: %s", notice.dag_id, notice.step,
                 ", ".join(f"{channel} {state}" for channel, state in outcome.items()))  # fmt: skip


def _connection(conn_id: str) -> Any | None:
    """The connection `conn_id`, or None when it is not defined (that channel is off)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def send_email(notice: Notice, settings: Settings, context: Any) -> bool:
    """Mail the notice through the smtp provider; False when no recipient or no SMTP connection is set."""
    if not settings.notify_email or _connection(settings.smtp_conn_id) is None:
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    mail = SmtpNotifier(to=list(settings.notify_email), subject=notice.subject, html_content=notice.html,
                        smtp_conn_id=settings.smtp_conn_id)  # fmt: skip
    mail.notify(context)  # not mail(context): that would render the error text as a Jinja template
    return True


def webhook_url(conn: Any) -> str:
    """The incoming webhook's URL from an http connection: the whole URL in the password (it is the secret)
    or in the host; else schema://host[:port]/ + the password as the path (Slack: services/T…/B…/…)."""
    for candidate in (conn.password, conn.host):
        if candidate and candidate.startswith(("https://", "http://")):
            return candidate
    if not conn.host:
        raise ValueError(f"connection {conn.conn_id!r} names no webhook: set its host (or password) to the URL")
    base = f"{conn.schema or 'https'}://{conn.host}" + (f":{conn.port}" if conn.port else "")
    return f"{base.rstrip('/')}/{(conn.password or '').lstrip('/')}"


def chat_message(notice: Notice, fmt: str) -> dict[str, Any]:
    """The webhook body: Slack's (and Teams' legacy connectors') {"text"}, or an Adaptive Card for a Teams
    workflow ("teams")."""
    if fmt == "teams":
        card = {
            "type": "AdaptiveCard", "version": "1.4", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "body": [
                {"type": "TextBlock", "weight": "Bolder", "wrap": True, "text": notice.subject},
                {"type": "TextBlock", "wrap": True, "text": f"Failed step: **{notice.step}**"},
                {"type": "TextBlock", "wrap": True, "fontType": "Monospace", "text": notice.reason},
            ],
            "actions": [{"type": "Action.OpenUrl", "title": "Open the run", "url": notice.run_url}],
        }  # fmt: skip
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}  # fmt: skip
    return {"text": f"*{notice.subject}*\nFailed step: *{notice.step}*\n```{notice.reason}```\n"
                    f"<{notice.run_url}|Open the run> · <{notice.step_url}|step log>"}  # fmt: skip


def send_chat(notice: Notice, settings: Settings, context: Any) -> bool:
    """Post the notice to the chat webhook; False when the connection is not defined."""
    conn = _connection(settings.chat_conn_id)
    if conn is None:
        return False
    import requests

    url = webhook_url(conn)
    body = chat_message(notice, str(conn.extra_dejson.get("format", "slack")).lower())

    def post() -> None:
        # Through the environment's proxy, if any: Slack and Teams are on the internet, unlike the registry.
        response = requests.post(url, json=body, timeout=10)
        response.raise_for_status()

    retry.call(post, f"the {settings.chat_conn_id} webhook", policy=WEBHOOK_RETRY, logger=log)
    return True
