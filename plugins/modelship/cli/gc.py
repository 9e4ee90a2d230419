"""`modelship gc [--dry-run] [--keep N]`: prune what only grows, by the retention policy (modelship.retention).

Keeps the N newest images and model versions (MODELSHIP_KEEP_IMAGES, MODELSHIP_KEEP_MODEL_VERSIONS; --keep sets
both) and always whatever serves, is promoted, quarantined, a rollback target or the desired state. The history,
quarantines and image events come from Airflow's REST API (MODELSHIP_AIRFLOW_*, as for `modelship history`);
without them no image or model version is deleted (only caches are pruned) and the output says why.
Exit status 1 when an item could not be deleted (the rest were).
"""

from __future__ import annotations

import argparse
from typing import Any

from modelship.cli import COMMON


def _events() -> tuple[dict[str, Any], dict[str, str]]:
    """The `image`, `quarantine` and `deployments` events from Airflow; None (and why) for those it cannot give."""
    from modelship import retry
    from modelship.cli.release import _api
    from modelship.overview import deployment_records, image_events, quarantine_events

    found: dict[str, Any] = {"image": None, "quarantine": None, "deployments": None}
    unavailable: dict[str, str] = {}
    try:
        api = _api()
    except Exception as exc:
        return found, dict.fromkeys(found, f"Airflow's REST API: {retry.first_line(exc)}")
    for name, read in (("image", image_events), ("quarantine", quarantine_events), ("deployments", deployment_records)):
        try:
            found[name] = read(api)
        except Exception as exc:
            unavailable[name] = f"Airflow's REST API: {retry.first_line(exc)}"
    return found, unavailable


def gc_command(args: argparse.Namespace) -> tuple[Any, str, int]:
    from modelship import retention

    events, unavailable = _events()
    report = retention.run(images=events["image"], quarantines=events["quarantine"], records=events["deployments"],
                           unavailable=unavailable, dry_run=args.dry_run, keep=args.keep)  # fmt: skip
    return report.as_dict(), report.format(), 1 if report.failures else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", parents=[COMMON], help="prune old images, model versions and caches (retention)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--keep", type=int, metavar="N", default=None,
                   help="keep the N newest images and model versions (default: MODELSHIP_KEEP_IMAGES, "
                   "MODELSHIP_KEEP_MODEL_VERSIONS)")  # fmt: skip
    p.set_defaults(handler=gc_command)
