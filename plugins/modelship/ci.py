"""The CI pipeline's steps: what the `ci` DAG's tasks call, one function per task.

Each step takes and returns plain dicts (they travel as XCom) and does one thing:
resolve → checkout → test → fetch model → build → smoke-test → push. A candidate names everything
the build is made of: the exact commit, the model version and its manifest sha256, and the tag
``<short commit>-<model version>`` that the pushed image will carry.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from modelship import apptests, images, source
from modelship.model_store import open_store
from modelship.registry import RegistryClient
from modelship.settings import Settings

log = logging.getLogger(__name__)

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NothingToBuild(Exception):
    """No model is promoted yet, so there is no application to ship: the run has nothing to do."""


def image_tag(commit: str, model_version: str) -> str:
    """`<short commit>-<model version>`, made a valid Docker tag (at most 128 characters)."""
    return f"{commit[:12]}-{_TAG_UNSAFE.sub('_', model_version)}"[:128]


def choose_commit(requested: str, events: list[dict[str, Any]], settings: Settings) -> str:
    """The commit to build: the `commit` param, else the commit a watcher announced, else the branch head."""
    if requested:
        return requested.strip()
    for extra in reversed(events):
        payload = extra.get("payload") or {}
        if payload.get("commit"):
            return str(payload["commit"])
    return source.head_commit(settings.source_repo, settings.source_branch)


def resolve(requested_commit: str, events: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """Pin what this run builds, and whether the registry already has exactly that image."""
    settings = Settings.get()
    commit = choose_commit(requested_commit, events, settings)
    store = open_store(settings)
    if store.read_alias(settings.model_name, settings.model_alias) is None:
        raise NothingToBuild(
            f"no version of model {settings.model_name!r} is promoted as {settings.model_alias!r} yet: "
            "publish one (modelship model publish) and run model_refresh; ci follows by itself"
        )
    version, _ = store.resolve(settings.model_name, settings.model_alias)
    model_sha256 = store.manifest_sha256(settings.model_name, version)
    tag = image_tag(commit, version)
    registry = RegistryClient.from_connection(settings.registry_conn_id)
    try:
        pushed = registry.already_pushed(
            settings.image_repository, tag, commit=commit, model_sha256=model_sha256
        )
    finally:
        registry.close()
    workspace = settings.work_dir / "ci" / _TAG_UNSAFE.sub("_", run_id)
    candidate = {
        "commit": commit,
        "model_name": settings.model_name,
        "model_version": version,
        "model_sha256": model_sha256,
        "tag": tag,
        "repository": f"{registry.address}/{settings.image_repository}",
        "workspace": str(workspace),
        "already_pushed": pushed,
    }
    if pushed:
        log.info("%s:%s is already in the registry as %s with this commit and model: nothing to build",
                 candidate["repository"], tag, pushed)  # fmt: skip
    else:
        log.info("building commit %s with model %s %s as tag %s", commit, settings.model_name, version, tag)
    return candidate


def checkout(candidate: dict[str, Any]) -> dict[str, Any]:
    settings = Settings.get()
    workspace = Path(candidate["workspace"])
    full = source.checkout(settings.source_repo, candidate["commit"], workspace / "src")
    return {**candidate, "commit": full, "subject": source.commit_subject(workspace / "src")}


def test(candidate: dict[str, Any]) -> str:
    settings = Settings.get()
    return apptests.run(Path(candidate["workspace"]) / "src", settings.cache_dir)


def fetch_model(candidate: dict[str, Any]) -> dict[str, Any]:
    """Fetch exactly the version resolved at the start (not the alias: it may move meanwhile)."""
    settings = Settings.get()
    store = open_store(settings)
    dest = Path(candidate["workspace"]) / "model"
    manifest = store.fetch(candidate["model_name"], candidate["model_version"], dest)
    log.info("model %s %s at %s (%s)", manifest["name"], manifest["version"], dest, store.stats.as_dict())
    return {**candidate, "model_dir": str(dest)}


def build(candidate: dict[str, Any]) -> dict[str, Any]:
    settings = Settings.get()
    workspace = Path(candidate["workspace"])
    app_dir = workspace / "src" / "app"
    wheels = images.wheelhouse(app_dir / "requirements.txt", settings.cache_dir)
    context = images.build_context(app_dir, Path(candidate["model_dir"]), wheels, workspace / "context")
    lineage = images.Lineage(
        commit=candidate["commit"],
        model_name=candidate["model_name"],
        model_version=candidate["model_version"],
        model_sha256=candidate["model_sha256"],
        source=settings.source_repo,
    )
    local_tag = f"{settings.image_repository}:{candidate['tag']}"
    hook = images.docker_hook()
    built = images.build_image(hook, context, local_tag, lineage.build_args(settings.base_image))
    return {**candidate, "image_id": built.id, "local_tag": local_tag}


def smoke_test(candidate: dict[str, Any]) -> dict[str, Any]:
    png, label = images.sample_digit()
    return images.smoke_test(
        images.docker_hook(),
        candidate["image_id"],
        commit=candidate["commit"],
        model_version=candidate["model_version"],
        model_sha256=candidate["model_sha256"],
        sample_png=png,
        expected_label=label,
    )


def push(candidate: dict[str, Any]) -> dict[str, Any]:
    """Push the smoke-tested image; returns the `image` Asset event's extra."""
    settings = Settings.get()
    digest = images.push_image(
        images.docker_hook(),
        candidate["image_id"],
        settings.image_repository,
        candidate["tag"],
        registry_conn=settings.registry_conn_id,
    )
    log.info("pushed %s:%s as %s", candidate["repository"], candidate["tag"], digest)
    return {
        "repository": candidate["repository"],
        "tag": candidate["tag"],
        "digest": digest,
        "commit": candidate["commit"],
        "model_version": candidate["model_version"],
        "model_sha256": candidate["model_sha256"],
    }


def cleanup(candidate: dict[str, Any] | None) -> None:
    """Remove the run's workspace (checkout, model copy, build context); images stay as build cache."""
    if candidate and candidate.get("workspace"):
        shutil.rmtree(candidate["workspace"], ignore_errors=True)
        log.info("removed workspace %s", candidate["workspace"])
