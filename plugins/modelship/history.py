"""The deployment history: every attempt the release DAG made (a DeploymentRecord in the `deployments` Asset,
kept in Airflow's metadata), as a timeline, and what served on a target at any moment, across rollbacks.

A record says what served once the attempt was over (`serving_after`): the new build when it was deployed,
the build restored by the rollback when it was not, nothing when nothing served before. So what served at
time T on a target is the `serving_after` of its last record that ended at or before T.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from modelship.lineage import DeploymentRecord


def parse_time(text: str) -> datetime:
    """An ISO 8601 time ("2026-12-01T03:00", "2026-12-01 03:00:00+01:00", "…Z"); naive means UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def ordered(records: Iterable[DeploymentRecord], target: str | None = None) -> list[DeploymentRecord]:
    """The records (of one target, if given) in the order they ended."""
    chosen = [r for r in records if target is None or r.target == target]
    return sorted(chosen, key=lambda r: parse_time(r.ended_at))


def serving_at(records: Iterable[DeploymentRecord], at: datetime, target: str) -> DeploymentRecord | None:
    """The last record of `target` that ended at or before `at` (its serving_after is what served), or None."""
    before = [r for r in ordered(records, target) if parse_time(r.ended_at) <= at]
    return before[-1] if before else None


def describe_serving(record: DeploymentRecord | None) -> str:
    if record is None:
        return "nothing recorded yet (no release had ended by then)"
    after = record.serving_after
    if not after:
        return f"nothing was serving (after {record.outcome} of {record.image_digest[:19]} in run {record.run_id})"
    how = "deployed" if record.outcome == "deployed" else f"restored when {record.image_digest[:19]} {record.outcome}"
    return (f"{after.get('image_digest', '?')} (commit {str(after.get('commit', '?'))[:12]}, model "
            f"{after.get('model_version', '?')}), {how} at {record.ended_at} by run {record.run_id}")  # fmt: skip


def format_timeline(records: Sequence[DeploymentRecord]) -> str:
    if not records:
        return "no deployments recorded yet"
    header = f"{'ENDED (UTC)':<26} {'TARGET':<11} {'OUTCOME':<12} {'IMAGE':<20} {'COMMIT':<13} {'MODEL':<10} RUN"
    lines = [header]
    for r in records:
        lines.append(
            f"{r.ended_at:<26} {r.target:<11} {r.outcome:<12} {r.image_digest[:19]:<20} {r.commit[:12]:<13} "
            f"{r.model_version:<10} {r.run_id}" + (f" (approved by {r.approved_by})" if r.approved_by else "")
        )
        if r.outcome != "deployed" and r.reason:
            lines.append(f"{'':<26} {'':<11} └ {r.reason.splitlines()[0][:150]}")
    return "\n".join(lines)
