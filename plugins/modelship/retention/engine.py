"""Prune the Docker engine that builds: the app images ci built and tagged (beyond the newest, and never one a
container uses, a protected one, or one younger than the grace period: a ci run may be between build and push),
dangling app images left by re-tagged builds, and the dangling build cache (the engine's prune API).

Only images of this deployment's app are candidates: tagged `<image repository>:…` (ci's local tag) or
`<registry>/<image repository>:…` (the pushed tag), dangling ones by the app's model-name label. The base image
and anything else on the engine are never touched.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from modelship.lineage import LABEL_CREATED, LABEL_MODEL_NAME, LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.retention.policy import Protections
from modelship.retention.registry import parse_time
from modelship.retention.report import Report

AREA = "engine"
UNPROTECTED = "not used by a container, not serving, promoted, quarantined, a rollback target or the desired state"


def engine_api(settings: Any) -> Any:
    """The Docker provider's client for the engine that builds (no registry login: nothing is pulled)."""
    from airflow.providers.docker.hooks.docker import DockerHook

    return DockerHook(docker_conn_id=None, base_url=settings.docker_host).api_client


def ours(tags: list[str] | None, repository: str) -> list[str]:
    """The tags of `tags` in the app repository: `<repository>:<tag>` or `<registry>/<repository>:<tag>`."""
    found = []
    for tag in tags or []:
        name = tag.rsplit(":", 1)[0]
        if name == repository or name.endswith("/" + repository):
            found.append(tag)
    return found


def _describe(image: dict[str, Any], tags: list[str]) -> str:
    labels = image.get("Labels") or {}
    what = ", ".join(tags) or "<dangling>"
    return (f"{image['Id'][7:19]} ({what}; commit {labels.get(LABEL_REVISION, '?')[:12]}, "
            f"model {labels.get(LABEL_MODEL_VERSION, '?')})")  # fmt: skip


def _built(image: dict[str, Any]) -> tuple[datetime, int, str]:
    """Newest first as in the registry: ci's build-time label, else the engine's time (whole seconds)."""
    created = datetime.fromtimestamp(image["Created"], tz=UTC)
    return (parse_time((image.get("Labels") or {}).get(LABEL_CREATED)) or created, image["Created"], image["Id"])


def prune(settings: Any, protections: Protections, report: Report, *, keep: int, grace_hours: float,
          api: Any = None) -> None:  # fmt: skip
    try:
        api = api or engine_api(settings)
        images = api.images(filters={"label": LABEL_MODEL_SHA256})
        dangling = api.images(filters={"dangling": True, "label": f"{LABEL_MODEL_NAME}={settings.model_name}"})
        in_use = {c["ImageID"] for c in api.containers(all=True)}
    except Exception as exc:
        report.fail(AREA, settings.docker_host, f"could not list the engine's images and containers: {exc}")
        return
    now = time.time()
    grace = grace_hours * 3600

    def reasons(image: dict[str, Any]) -> list[str]:
        labels = image.get("Labels") or {}
        digests = [ref.partition("@")[2] for ref in image.get("RepoDigests") or []]
        found = protections.image_reasons(digests, labels)
        if image["Id"] in in_use:
            found.insert(0, "used by a container")
        if now - image["Created"] < grace:
            found.insert(0, f"built less than {grace_hours:g} h ago (a ci run may still smoke-test or push it)")
        return found

    tagged = sorted((i for i in images if ours(i.get("RepoTags"), settings.image_repository)), key=_built,
                    reverse=True)  # fmt: skip
    promoted: dict[str, list[str]] = {}
    for sha, aliases in protections.promoted.items():
        newest = next((i for i in tagged if (i.get("Labels") or {}).get(LABEL_MODEL_SHA256) == sha), None)
        if newest is not None:
            promoted.setdefault(newest["Id"], []).append(f"the newest image of the promoted model {', '.join(aliases)}")
    for rank, image in enumerate(tagged):
        tags = ours(image.get("RepoTags"), settings.image_repository)
        item = _describe(image, tags)
        why_kept = reasons(image) + promoted.get(image["Id"], [])
        if why_kept:
            report.keep(AREA, item, "; ".join(why_kept))
        elif rank < keep:
            report.keep(AREA, item, f"among the {keep} newest built here")
        else:
            # Untag ours only (another name on the same image keeps it); the last tag's removal deletes the image.
            untag = lambda t=tuple(tags): [api.remove_image(tag) for tag in t]  # noqa: E731
            report.remove(AREA, item, f"not among the {keep} newest built here; {UNPROTECTED}", untag,
                          size=image.get("Size"))  # fmt: skip
    for image in dangling:
        item = _describe(image, [])
        why_kept = reasons(image)
        if why_kept:
            report.keep(AREA, item, "; ".join(why_kept))
        else:
            report.remove(AREA, item, "dangling (its tag moved to a newer build); " + UNPROTECTED,
                          lambda i=image["Id"]: api.remove_image(i), size=image.get("Size"))  # fmt: skip
    report.remove(AREA, "build cache", f"dangling build cache older than {grace_hours:g} h (the engine's prune API)",
                  lambda: api.prune_builds(filters={"until": f"{grace_hours:g}h"}))  # fmt: skip
