"""The release's approval gate: before a gated target is deployed to, a person approves in the Airflow UI.

Off by default; on per target (MODELSHIP_APPROVAL_TARGETS, e.g. "kubernetes"). The gate is Airflow's own
human-in-the-loop ApprovalOperator (standard provider): the `approve` task waits in `awaiting_input`, and the
UI's Required Actions show what would change — what serves now → what the release would deploy: commit,
model version and accuracy, image digest. Whoever approves goes into the deployment's record
(DeploymentRecord.approved_by). Rejected, or unanswered for MODELSHIP_APPROVAL_TIMEOUT: the task ends
skipped naming who and why (or that nobody answered), deploy is skipped, and what serves keeps serving.
A release to a target that is not gated passes the task at once, without waiting.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from modelship.lineage import Approval, ReleaseImage
from modelship.settings import Settings

log = logging.getLogger(__name__)
REASON = "reason"


class ReleaseApproval(ApprovalOperator):
    """Approve (or reject) the image the `image_task` selected, for the target of the run's `target` param."""

    def __init__(self, *, image_task: str = "select_image", timeout: float | None = None, **kwargs: Any) -> None:
        settings = Settings.get()  # environment only: this runs at parse time
        seconds = settings.approval_timeout if timeout is None else timeout
        kwargs.setdefault("subject", "Approve this release")  # the real subject is written when the task runs
        # The form's one field; the DAG's own params arrive merged in kwargs and the operator leaves them out.
        params = ParamsDict(kwargs.pop("params", None) or {})
        params[REASON] = Param("", type="string", title="Why", source="task",
                               description="Why you approve or reject it; it goes into the run's log and the record.")
        super().__init__(
            response_timeout=timedelta(seconds=seconds),
            defaults=self.REJECT,  # unanswered in time: a rejection, never a deployment
            params=params,
            **kwargs,
        )
        self.image_task = image_task
        self.timeout_text = _duration(seconds)

    def _proposal(self, context: Any) -> tuple[str, ReleaseImage]:
        settings = Settings.get()
        target = context["params"].get("target") or settings.deploy_target
        image = ReleaseImage.from_dict(context["ti"].xcom_pull(task_ids=self.image_task))
        return target, image

    def execute(self, context: Any) -> Any:
        settings = Settings.get()
        target, image = self._proposal(context)
        if target not in settings.approval_targets:
            self.log.info("no approval needed to deploy to %s (MODELSHIP_APPROVAL_TARGETS=%s)", target,
                          ",".join(settings.approval_targets) or "none")  # fmt: skip
            return Approval(target=target, image=image.image, required=False, approved=True).as_dict()
        self.subject = f"Deploy {image.model_name} {image.model_version} (commit {image.commit[:12]}) to {target}?"
        self.body = describe_change(target, image, settings, self.timeout_text)
        self.log.info("waiting up to %s for a person to approve: %s", self.timeout_text, self.subject)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # The human-in-the-loop base validates the answer; ApprovalOperator's own rejection path (downstream
        # skipped, this task green) is replaced by a skip of this task that says who rejected it and why.
        answer = HITLOperator.execute_complete(self, context, event)
        target, image = self._proposal(context)
        who = (answer.get("responded_by_user") or {}).get("name") or ""
        at = answer.get("responded_at")
        at = at.isoformat() if isinstance(at, datetime) else str(at or "")
        reason = str((answer.get("params_input") or {}).get(REASON) or "")
        approved = answer["chosen_options"] == [self.APPROVE] and bool(who) and not event.get("timedout")
        self.hitl_summary_extra["approved"] = approved
        if approved:
            self.log.info("approved by %s at %s%s", who, at, f": {reason}" if reason else "")
            return Approval(target=target, image=image.image, required=True, approved=True, by=who, at=at,
                            reason=reason).as_dict()  # fmt: skip
        from airflow.sdk.exceptions import AirflowSkipException

        what = f"the release of {image.image} (commit {image.commit[:12]}, model {image.model_version}) to {target}"
        if event.get("timedout") or not who:
            why = f"nobody approved {what} within {self.timeout_text}"
        else:
            why = f"{who} rejected {what} at {at}: {reason or 'no reason given'}"
        raise AirflowSkipException(f"{why}. Nothing was deployed; what serves keeps serving.")


def approver(approval: Approval | None) -> str:
    """Who approved the deployment ("" when the target has no gate, or the DAG none)."""
    return approval.by if approval is not None and approval.required and approval.approved else ""


def describe_change(target: str, image: ReleaseImage, settings: Settings, timeout_text: str = "") -> str:
    """Markdown for the approval form: what serves now → what the release would deploy, and why."""
    from modelship import overview

    now = overview.target_status(target, settings)
    accuracy = _accuracies(settings, {image.model_version, str(now.get("model_version") or "")})

    def model(version: str | None) -> str:
        if not version:
            return "—"
        score = accuracy.get(version)
        return f"{image.model_name or settings.model_name} {version}" + (
            f" (accuracy {score:.4f})" if isinstance(score, int | float) else ""
        )

    if not now.get("reachable"):
        serving = {"commit": f"cannot tell: {now.get('error')}", "model": "", "digest": "", "since": ""}
    elif not now.get("serving"):
        serving = {"commit": "nothing serves", "model": "—", "digest": "—", "since": "—"}
    else:
        serving = {"commit": f"`{str(now.get('commit') or '?')[:12]}`", "model": model(now.get("model_version")),
                   "digest": f"`{now.get('image_digest') or '?'}`", "since": str(now.get("since") or "?")}  # fmt: skip
    rows = [
        ("commit", serving["commit"], f"`{image.commit[:12]}`"),
        ("model", serving["model"], model(image.model_version)),
        ("image digest", serving["digest"], f"`{image.digest}`"),
        ("serving since", serving["since"], "once approved"),
    ]
    lines = [f"**{target}**: what serves now → what this release deploys", "",
             "| | serving now | after this release |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {before} | {after} |" for name, before, after in rows]
    lines += ["", f"Image: `{image.image}`", "", f"Why this image: {image.why or 'named by the run'}", "",
              "**Approve** to deploy it now. **Reject** (say why) to leave what serves as it is."]  # fmt: skip
    if timeout_text:
        lines.append(f"Unanswered for {timeout_text}, the release is rejected.")
    return "\n".join(lines)


def _accuracies(settings: Settings, versions: set[str]) -> dict[str, float]:
    """Held-out accuracy of each model version, from its manifest (left out when the store cannot say)."""
    from modelship.model_store import open_store

    found: dict[str, float] = {}
    try:
        store = open_store(settings)
        for version in sorted(v for v in versions if v):
            found[version] = store.read_manifest(settings.model_name, version)["metrics"]["accuracy"]
    except Exception as exc:  # the form still shows commit and digest without it
        log.warning("model accuracy unknown for %s: %s", ", ".join(sorted(versions - set(found))), exc)
    return found


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
