"""The `modelship` command: what the DAGs do, from a terminal, against the same store and connections.

    modelship model publish DIR [--name NAME]
    modelship model list [NAME]
    modelship model promote NAME VERSION [--alias production] [--expect VERSION|none]
    modelship model fetch NAME VERSION_OR_ALIAS DEST
    modelship model show NAME VERSION_OR_ALIAS
    modelship status [--target T]
    modelship history [--target T] [--at TIME]
    modelship image quarantined
    modelship image release-quarantine DIGEST
    modelship connections check
    modelship gc [--dry-run] [--keep N]

Every command takes --json (machine-readable output on stdout). Errors go to stderr as one line and exit
with status 1; MODELSHIP_DEBUG=1 shows the traceback instead. The store and its credentials come from the
same settings and Airflow connections the DAGs use (MODELSHIP_MODEL_STORE, AIRFLOW_CONN_MODELSHIP_BLOB, ...).

One module per command group (model, release, connections, gc): each has `register(sub)`, which adds its
parsers to `sub`, gives each command `parents=[COMMON]` and `set_defaults(handler=...)`. A handler takes the
parsed args and returns (data for --json, human-readable text), and may add an exit status (gc: 1 when an
item could not be deleted, after printing the report). `history`, `image` and the desired state in
`status` read Airflow's metadata through its REST API (MODELSHIP_AIRFLOW_URL and credentials:
modelship.airflow_api).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Options every command accepts, so `--json` works in the same place (after the command) everywhere.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")

Handler = Callable[[argparse.Namespace], tuple[Any, str]]


def command_groups() -> list[Callable[[argparse._SubParsersAction], None]]:
    from modelship.cli import connections, gc, model, release

    return [model.register, release.register, connections.register, gc.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelship", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in command_groups():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings and retries ("blob store unreachable ... retrying") go to stderr, so a slow command
    # says why; routine INFO lines would only repeat the result, and stdout stays clean for --json.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("modelship: %(message)s"))
    logger = logging.getLogger("modelship")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logging.getLogger("modelship.model_store.retry").setLevel(logging.INFO)
    try:
        data, text, *status = args.handler(args)
    except KeyboardInterrupt:
        print("modelship: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a CLI answers with one line, not a traceback
        if os.environ.get("MODELSHIP_DEBUG"):
            raise
        print(f"modelship: error: {exc}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else text)
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
