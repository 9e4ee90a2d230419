"""`modelship status`: what is serving, built from what, asked of the deploy target itself.

The docker target answers from the engine's container labels, the kubernetes target from the
Deployment's and ReplicaSet's annotations: no Airflow database needed, so it works when Airflow is down.
"""

from __future__ import annotations

import argparse
from typing import Any

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
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `status` to the CLI. Its handler returns (data for --json, text), as cli.main expects."""
    parser = subparsers.add_parser(
        "status",
        help="what is serving: image digest, commit, model version, since when",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target",
        choices=("docker", "kubernetes"),
        default=None,
        help="deploy target to ask (default: MODELSHIP_DEPLOY_TARGET, else docker)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.set_defaults(handler=status_command)
    return parser


def status_command(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from modelship.deploy import get_target
    from modelship.settings import Settings

    settings = Settings.get()
    info = get_target(args.target or settings.deploy_target, settings).status()
    return info, format_status(info)


def format_status(info: dict[str, Any]) -> str:
    where = info.get("container") or "/".join(str(info[k]) for k in ("namespace", "name") if info.get(k))
    lines = [f"{'target':<14} {info.get('target')}" + (f" ({where})" if where else "")]
    for key, label in FIELDS:
        value = info.get(key)
        if key == "serving":
            value = "yes" if value else "NO: nothing is serving"
        if value not in (None, ""):
            lines.append(f"{label:<14} {value}")
    return "\n".join(lines)
