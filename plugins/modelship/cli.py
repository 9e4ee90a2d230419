"""The `modelship` command: what the DAGs do, from a terminal, against the same store and connections.

    modelship model publish DIR [--name NAME]
    modelship model list [NAME]
    modelship model promote NAME VERSION [--alias production] [--expect VERSION|none]
    modelship model fetch NAME VERSION_OR_ALIAS DEST
    modelship model show NAME VERSION_OR_ALIAS
    modelship status [--target T]
    modelship connections check

Every command takes --json (machine-readable output on stdout). Errors go to stderr as one line and exit
with status 1; MODELSHIP_DEBUG=1 shows the traceback instead. The store and its credentials come from the
same settings and Airflow connections the DAGs use (MODELSHIP_MODEL_STORE, AIRFLOW_CONN_MODELSHIP_BLOB, ...).

Adding a command group: write `_add_<group>_commands(sub)` that adds one parser to `sub`, gives each of
its commands `parents=[COMMON]` and `set_defaults(handler=...)`, and append it to COMMAND_GROUPS. A
handler takes the parsed args and returns (data for --json, human-readable text).
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


def _store() -> Any:
    from modelship.model_store import open_store

    return open_store()


def _accuracy(metrics: dict[str, Any]) -> str:
    value = metrics.get("accuracy")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


# --- model ----------------------------------------------------------------------------------------------


def _publish(args: argparse.Namespace) -> tuple[Any, str]:
    from modelpkg.manifest import manifest_sha256

    store = _store()
    manifest = store.publish(args.dir, name=args.name)
    sha = manifest_sha256(args.dir)
    data = {"name": manifest["name"], "version": manifest["version"], "sha256": sha, "store": repr(store)}
    return data, f"published {manifest['name']} {manifest['version']} (sha256 {sha}) to {store!r}"


def _list(args: argparse.Namespace) -> tuple[Any, str]:
    store = _store()
    if not args.name:
        models = store.list_models()
        return {"models": models}, "\n".join(models) if models else f"no models in {store!r}"
    versions = store.list_versions(args.name)
    aliases = store.list_aliases(args.name)
    by_version: dict[str, list[str]] = {}
    for alias, record in aliases.items():
        by_version.setdefault(record["version"], []).append(alias)
    lines = [f"{'VERSION':<16} {'ACCURACY':<9} {'CREATED':<21} {'SHA256':<14} ALIASES"]
    for v in versions:
        lines.append(
            f"{v['version']:<16} {_accuracy(v['metrics']):<9} {v['created_at'] or '-':<21} "
            f"{v['sha256'][:12]:<14} {', '.join(by_version.get(v['version'], []))}"
        )
    if not versions:
        lines = [f"model {args.name} has no published versions in {store!r}"]
    return {"name": args.name, "versions": versions, "aliases": aliases}, "\n".join(lines)


def _promote(args: argparse.Namespace) -> tuple[Any, str]:
    from modelship.model_store import ANY

    expected: object = ANY
    if args.expect is not None:
        expected = None if args.expect.lower() == "none" else args.expect
    record = _store().promote(args.name, args.version, alias=args.alias, expected_current=expected)
    previous = record["previous"] or "nothing"
    text = f"{args.name}:{args.alias} -> {record['version']} (was {previous})"
    return record, f"{text}, sha256 {record['manifest_sha256']}"


def _fetch(args: argparse.Namespace) -> tuple[Any, str]:
    from modelpkg.manifest import manifest_sha256

    store = _store()
    manifest = store.fetch(args.name, args.ref, args.dest)
    sha = manifest_sha256(args.dest)
    data = {
        "name": manifest["name"],
        "version": manifest["version"],
        "sha256": sha,
        "dest": os.path.abspath(args.dest),
        "stats": store.stats.as_dict(),
    }
    source = "from the cache" if store.stats.cache_hits else f"{store.stats.bytes_downloaded} bytes downloaded"
    return data, f"fetched {manifest['name']} {manifest['version']} (sha256 {sha}) to {args.dest}, {source}"


def _show(args: argparse.Namespace) -> tuple[Any, str]:
    from modelpkg.manifest import MANIFEST

    store = _store()
    version, manifest = store.resolve(args.name, args.ref)
    sha = store.manifest_sha256(args.name, version)
    aliases = [a for a, r in store.list_aliases(args.name).items() if r["version"] == version]
    lines = [
        f"model:    {args.name}",
        f"version:  {version}",
        f"sha256:   {sha}  ({MANIFEST})",
        f"created:  {manifest.get('created_at', '-')}",
        f"aliases:  {', '.join(aliases) or '-'}",
        "metrics:  " + ", ".join(f"{k}={v}" for k, v in sorted(manifest["metrics"].items())),
        "files:",
        *(f"  {digest}  {rel}" for rel, digest in sorted(manifest["files"].items())),
    ]
    return {"version": version, "sha256": sha, "aliases": aliases, "manifest": manifest}, "\n".join(lines)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="publish, list, promote and fetch model versions")
    cmds = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("publish", parents=[COMMON], help="upload a model package as a new version")
    p.add_argument("dir", help="package folder with model.json (e.g. from python -m training.train)")
    p.add_argument("--name", help="expected model name (refused if the manifest says otherwise)")
    p.set_defaults(handler=_publish)

    p = cmds.add_parser("list", parents=[COMMON], help="models, or one model's versions and aliases")
    p.add_argument("name", nargs="?", help="model name (omit to list models)")
    p.set_defaults(handler=_list)

    p = cmds.add_parser("promote", parents=[COMMON], help="point an alias at a version (compare-and-swap)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--alias", default="production", help="alias to move (default: production)")
    p.add_argument("--expect", metavar="VERSION", help="fail unless the alias is currently at VERSION ('none': unset)")
    p.set_defaults(handler=_promote)

    p = cmds.add_parser("fetch", parents=[COMMON], help="download and verify a version into DEST")
    p.add_argument("name")
    p.add_argument("ref", metavar="VERSION_OR_ALIAS")
    p.add_argument("dest", help="folder to create (an existing one is replaced atomically)")
    p.set_defaults(handler=_fetch)

    p = cmds.add_parser("show", parents=[COMMON], help="manifest, sha256 and aliases of a version")
    p.add_argument("name")
    p.add_argument("ref", metavar="VERSION_OR_ALIAS")
    p.set_defaults(handler=_show)


# --- connections ----------------------------------------------------------------------------------------


def _check_connections(args: argparse.Namespace) -> tuple[Any, str]:
    """The connections the DAGs use resolve (from Airflow's secrets backends: AIRFLOW_CONN_*, the DB, a vault);
    each is named with its type and host, never a secret."""
    from airflow.sdk import BaseHook

    from modelship.settings import Settings

    settings = Settings.get()
    found = {}
    for conn_id in (settings.wasb_conn_id, settings.registry_conn_id):
        conn = BaseHook.get_connection(conn_id)
        found[conn_id] = {"type": conn.conn_type, "host": conn.host or "(in extra)"}
    lines = [f"connection {conn_id}: type {c['type']}, host {c['host']}" for conn_id, c in found.items()]
    return found, "\n".join(lines)


def _add_connections_commands(sub: argparse._SubParsersAction) -> None:
    connections = sub.add_parser("connections", help="check the Airflow connections the DAGs use")
    cmds = connections.add_subparsers(dest="connections_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("check", parents=[COMMON], help="the model store's and registry's connections resolve")
    p.set_defaults(handler=_check_connections)


# Each function adds one top-level command group; append yours here.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [_add_model_commands, _add_connections_commands]
COMMAND_GROUPS.append(__import__("modelship.deploy.status", fromlist=["register"]).register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelship", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
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
        data, text = args.handler(args)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
