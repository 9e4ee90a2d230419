"""The CI pipeline's steps: what the `ci` DAG's tasks call, one function per task.

resolve → (announce, when exactly this image is already pushed) or checkout → test → fetch model → build →
smoke-test → push. A `Build` names everything the image is made of: the exact commit, the model version and
its manifest sha256, and the tag ``<short commit>-<model version>`` the pushed image carries. Every run that
ends with the image in the registry announces it as an `image` event, rebuilt or not: a model rolled back
to a version built before flows to the release in seconds, without a rebuild.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modelship import apptests, images, source
from modelship.lineage import Build, ImageEvent
from modelship.model_store import open_store
from modelship.registry import RegistryClient
from modelship.settings import Settings
from modelship.verdicts import NothingToDo

log = logging.getLogger(__name__)

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NothingToBuild(NothingToDo):
    """No model is promoted yet, so there is no application to ship: the run has nothing to do."""


class AlreadyPushed(NothingToDo):
    """The registry has exactly this commit × model already: the build steps have nothing to do."""


def image_tag(commit: str, model_version: str) -> str:
    """`<short commit>-<model version>`, made a valid Docker tag (at most 128 characters)."""
    return f"{commit[:12]}-{_TAG_UNSAFE.sub('_', model_version)}"[:128]


def choose_commit(requested: str, triggered_by: Iterable[Mapping[str, Any]], settings: Settings) -> str:
    """The commit to build: the `commit` param, else the commit a watcher announced, else the branch head."""
    if requested:
        return requested.strip()
    for extra in reversed(list(triggered_by)):
        payload = extra.get("payload") or {}
        if payload.get("commit"):
            return str(payload["commit"])
    return source.head_commit(settings.source_repo, settings.source_branch)


def resolve(requested_commit: str, triggering_asset_events: Any, run_id: str) -> Build:
    """Pin what this run builds, and whether the registry already has exactly that image."""
    settings = Settings.get()
    extras = [dict(event.extra or {}) for evs in (triggering_asset_events or {}).values() for event in evs]
    commit = choose_commit(requested_commit, extras, settings)
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
        pushed = registry.already_pushed(settings.image_repository, tag, commit=commit, model_sha256=model_sha256)
    finally:
        registry.close()
    build = Build(
        commit=commit,
        model_name=settings.model_name,
        model_version=version,
        model_sha256=model_sha256,
        tag=tag,
        repository=f"{registry.address}/{settings.image_repository}",
        workspace=str(settings.work_dir / "ci" / _TAG_UNSAFE.sub("_", run_id)),
        already_pushed=pushed,
    )
    if pushed:
        log.info("%s:%s is already in the registry as %s with this commit and model: announcing it, no rebuild",
                 build.repository, tag, pushed)  # fmt: skip
    else:
        log.info("building commit %s with model %s %s as tag %s", commit, settings.model_name, version, tag)
    return build


def announce(build: Build) -> ImageEvent:
    """The `image` event of an image the registry already has (rebuilt: false, nothing pushed)."""
    if not build.already_pushed:
        raise NothingToDo(f"{build.repository}:{build.tag} is not in the registry yet: the build steps make it")
    return _image_event(build, build.already_pushed, rebuilt=False)


def _image_event(build: Build, digest: str, **pushed: Any) -> ImageEvent:
    return ImageEvent(
        repository=build.repository,
        tag=build.tag,
        digest=digest,
        commit=build.commit,
        model_name=build.model_name,
        model_version=build.model_version,
        model_sha256=build.model_sha256,
        **pushed,
    )


def checkout(build: Build) -> Build:
    if build.already_pushed:
        raise AlreadyPushed(f"{build.repository}:{build.tag} is already pushed ({build.already_pushed}): not rebuilt")
    settings = Settings.get()
    workspace = Path(build.workspace)
    full = source.checkout(settings.source_repo, build.commit, workspace / "src", cache_dir=settings.cache_dir)
    return build.replace(commit=full, subject=source.commit_subject(workspace / "src"))


def test(build: Build) -> Build:
    """The app's tests, in a throwaway container that reaches no credential, socket, folder or network."""
    settings = Settings.get()
    apptests.run(Path(build.workspace) / "src", settings.cache_dir)
    return build


def fetch_model(build: Build) -> Build:
    """Fetch exactly the version resolved at the start (not the alias: it may move meanwhile)."""
    settings = Settings.get()
    store = open_store(settings)
    dest = Path(build.workspace) / "model"
    manifest = store.fetch(build.model_name, build.model_version, dest)
    log.info("model %s %s at %s (%s)", manifest["name"], manifest["version"], dest, store.stats.as_dict())
    return build.replace(model_dir=str(dest))


def build_image(build: Build) -> Build:
    """Build through a client with no registry credential: the commit's Dockerfile runs here (with no network).
    Only a base image the engine lacks is pulled with the registry connection, before the build."""
    settings = Settings.get()
    workspace = Path(build.workspace)
    app_dir = workspace / "src" / "app"
    if app_dir.is_symlink():
        raise images.ImageBuildError("app/ is a symbolic link in this commit: refusing to build from it")
    wheels = images.wheelhouse(app_dir / "requirements.txt", settings.cache_dir)
    context = images.build_context(app_dir, Path(build.model_dir), wheels, workspace / "context")
    lineage = images.Lineage(
        commit=build.commit,
        model_name=build.model_name,
        model_version=build.model_version,
        model_sha256=build.model_sha256,
        source=source.public_url(settings.source_repo),
    )
    local_tag = f"{settings.image_repository}:{build.tag}"
    engine = images.engine_client()
    images.ensure_base_image(engine, settings.base_image, settings.registry_conn_id)
    built = images.build_image(engine, context, local_tag, lineage.build_args(settings.base_image))
    return build.replace(image_id=built.id, local_tag=local_tag)


def smoke_test(build: Build) -> Build:
    png, label = images.sample_digit()
    images.smoke_test(
        images.engine_client(),  # no registry credential: the image is local
        build.image_id,
        commit=build.commit,
        model_version=build.model_version,
        model_sha256=build.model_sha256,
        sample_png=png,
        expected_label=label,
    )
    return build


def push(build: Build) -> ImageEvent:
    """Push the smoke-tested image (the one step logged into the registry); the `image` event, with what it sent."""
    settings = Settings.get()
    pushed = images.push_image(
        images.docker_hook(),
        build.image_id,
        settings.image_repository,
        build.tag,
        registry_conn=settings.registry_conn_id,
    )
    log.info("pushed %s:%s as %s (%d layers, %d bytes sent)", build.repository, build.tag, pushed.digest,
             pushed.layers_pushed, pushed.bytes_pushed)  # fmt: skip
    return _image_event(build, pushed.digest, rebuilt=True, layers_pushed=pushed.layers_pushed,
                        bytes_pushed=pushed.bytes_pushed)  # fmt: skip


def cleanup(build: Build | None) -> None:
    """Remove the run's workspace (checkout, model copy, build context); images stay as build cache."""
    if build is not None and build.workspace:
        shutil.rmtree(build.workspace, ignore_errors=True)
        log.info("removed workspace %s", build.workspace)
