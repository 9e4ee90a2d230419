"""`modelship status | history | image …`: what serves, what should, what happened, and what is set aside.

    modelship status [--target T]             what serves (asked of the target itself), and whether it is the
                                               desired state (modelship.desired), and if not, why
    modelship history [--target T] [--at TIME] every deployment attempt, or what served at TIME
    modelship image quarantined               images a failed release set aside, with when and why
    modelship image release-quarantine DIGEST lift one: the next release may deploy it again

The target answers `status` from its own state (container labels, Deployment annotations), so it works with
Airflow down; the rest reads the Asset events in Airflow's metadata through its REST API (modelship.overview,
the same reads as the Airflow UI's Deployments page).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from modelship.cli import COMMON

# (key in the target's status dict, label) in print order.
FIELDS = (
    ("serving", "serving"),
    ("image", "image"),
    ("image_digest", "image digest"),
    ("commit", "commit"),
    ("model_version", "model version"),
    ("model_sha256", "model sha256"),
    ("since", "since"),
    ("revision", "revision"),
    ("replicas", "ready"),
    ("health", "health"),
    ("desired", "desired state"),
)


def _api() -> Any:
    from modelship.airflow_api import AirflowAPI

    return AirflowAPI.from_environment()


# --- status ---------------------------------------------------------------------------------------------


def status_command(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from modelship import overview
    from modelship.deploy import get_target
    from modelship.settings import Settings

    settings = Settings.get()
    info = get_target(args.target or settings.deploy_target, settings).status()
    info.setdefault("health", overview.health(info)[1])
    if not args.no_desired:
        try:
            info["desired"] = overview.desired_state(overview.serving_digest(info), _api())
        except Exception as exc:  # status must still say what serves when Airflow cannot be asked
            info["desired"] = overview.unknown(exc)
    return info, format_status(info)


def format_status(info: dict[str, Any]) -> str:
    where = info.get("container") or "/".join(str(info[k]) for k in ("namespace", "name") if info.get(k))
    lines = [f"{'target':<14} {info.get('target')}" + (f" ({where})" if where else "")]
    for key, label in FIELDS:
        value = info.get(key)
        if key == "serving":
            value = "yes" if value else "NO: nothing is serving"
        if key == "desired" and isinstance(value, dict):
            verdict = {True: "yes", False: "NO", None: "?"}[value.get("in_desired_state")]
            value = f"{verdict}: {value.get('why')}"
        if value not in (None, ""):
            lines.append(f"{label:<14} {value}")
    return "\n".join(lines)


# --- history --------------------------------------------------------------------------------------------


def history_command(args: argparse.Namespace) -> tuple[Any, str]:
    from modelship import history, overview

    records = history.ordered(overview.deployment_records(_api()), args.target)
    if args.at:
        at = history.parse_time(args.at)
        targets = [args.target] if args.target else sorted({r.target for r in records}) or ["docker"]
        found = {t: history.serving_at(records, at, t) for t in targets}
        data = {"at": at.isoformat(), "serving": {t: (r.serving_after if r else None) for t, r in found.items()},
                "record": {t: (r.as_dict() if r else None) for t, r in found.items()}}  # fmt: skip
        text = "\n".join(f"{t} at {at.isoformat()}: {history.describe_serving(r)}" for t, r in found.items())
        return data, text
    return [r.as_dict() for r in records], history.format_timeline(records)


# --- image quarantine -------------------------------------------------------------------------------------


def quarantined_command(args: argparse.Namespace) -> tuple[Any, str]:
    from modelship import desired, overview

    held = desired.in_quarantine(overview.quarantine_events(_api()))
    if not held:
        return [], "no image is quarantined"
    return [q.as_dict() for q in held.values()], "\n".join(desired.quarantine_notice(q) for q in held.values())


def release_quarantine_command(args: argparse.Namespace) -> tuple[Any, str]:
    from modelship import desired, overview
    from modelship.lineage import Quarantine
    from modelship.release import now

    api = _api()
    held = desired.in_quarantine(overview.quarantine_events(api))
    digest = args.digest if args.digest.startswith("sha256:") else f"sha256:{args.digest}"
    matches = [d for d in held if d.startswith(digest)]
    if len(matches) != 1:
        raise ValueError(f"{args.digest} names {len(matches)} quarantined images "
                         f"({', '.join(held) or 'none is quarantined'})")  # fmt: skip
    q = held[matches[0]]
    who = os.environ.get("MODELSHIP_AIRFLOW_USER") or "a user"
    lifted = Quarantine(digest=q.digest, action="released", at=now(), image=q.image, commit=q.commit,
                        model_version=q.model_version, reason=args.reason, target=q.target, by=who)  # fmt: skip
    api.create_asset_event("quarantine", lifted.as_dict())
    return lifted.as_dict(), f"lifted the quarantine of {q.digest} (commit {q.commit[:12]}, model {q.model_version})"


def register(sub: argparse._SubParsersAction) -> None:
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", choices=("docker", "kubernetes"), default=None,
                        help="deploy target (default: MODELSHIP_DEPLOY_TARGET, else docker)")  # fmt: skip

    p = sub.add_parser("status", parents=[COMMON, target], help="what serves, and whether it is the desired state")
    p.add_argument("--no-desired", action="store_true", help="ask the target only (no Airflow, no model store)")
    p.set_defaults(handler=status_command)

    p = sub.add_parser("history", parents=[COMMON, target], help="every deployment attempt, or what served when")
    p.add_argument("--at", metavar="TIME", help="what served at TIME (ISO 8601, e.g. 2026-12-01T03:00; naive: UTC)")
    p.set_defaults(handler=history_command)

    image = sub.add_parser("image", help="images a failed release quarantined")
    cmds = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("quarantined", parents=[COMMON], help="list quarantined images with when and why")
    p.set_defaults(handler=quarantined_command)
    p = cmds.add_parser("release-quarantine", parents=[COMMON],
                        help="lift a quarantine (the next release may deploy it)")  # fmt: skip
    p.add_argument("digest", help="the image digest (sha256:…; a unique prefix will do)")
    p.add_argument("--reason", default="lifted by hand", help="recorded with the lift")
    p.set_defaults(handler=release_quarantine_command)
