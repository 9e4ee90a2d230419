"""`modelship model …`: publish, list, promote, fetch and show model versions, against the same store and
connections the DAGs use."""

from __future__ import annotations

import argparse
import os
from typing import Any

from modelship.cli import COMMON


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


def register(sub: argparse._SubParsersAction) -> None:
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
