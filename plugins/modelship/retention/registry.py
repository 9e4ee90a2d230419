"""Prune the app repository in the registry: keep the newest images (by build time) and every protected one,
delete the rest by manifest digest (registry v2 DELETE: every tag naming it goes too). Then, where configured,
the registry's own garbage collection reclaims the blobs no manifest references any more.

ci's `resolve` asks the registry whether a commit × model is already pushed, so a deleted image is simply
built again if it is ever wanted: nothing announces an image the registry no longer has.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelship.lineage import LABEL_CREATED, LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.registry import RegistryClient, RegistryNotFound
from modelship.retention.policy import Protections
from modelship.retention.report import Report

log = logging.getLogger("modelship.retention")
AREA = "registry"
UNPROTECTED = "not serving, promoted, quarantined, a rollback target or the desired state"


@dataclass(frozen=True)
class RegistryImage:
    digest: str
    tags: tuple[str, ...]
    labels: dict[str, str]
    built: datetime  # ci's org.opencontainers.image.created label (seconds), else the config's time
    created: datetime  # the config's own `created` (the engine's, finer): breaks ties

    def describe(self, repository: str) -> str:
        commit, model = self.labels.get(LABEL_REVISION, "?")[:12], self.labels.get(LABEL_MODEL_VERSION, "?")
        return f"{repository}@{self.digest[:19]} ({', '.join(self.tags)}; commit {commit}, model {model})"


_NEVER = datetime.min.replace(tzinfo=UTC)


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time as Docker and ci write them (nanoseconds, `Z`); None when there is none."""
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(text).replace("Z", "+00:00"))  # fromisoformat: microseconds at most
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def list_images(client: RegistryClient, repository: str) -> list[RegistryImage]:
    """Every image of the repository (tags grouped by digest), newest build first."""
    tags: dict[str, list[str]] = {}
    for tag in client.tags(repository):
        digest = client.digest(repository, tag)
        if digest:  # a tag deleted meanwhile is simply not there
            tags.setdefault(digest, []).append(tag)
    found = []
    for digest, names in tags.items():
        try:
            config = client.config(repository, digest)
        except RegistryNotFound:
            continue
        labels = dict((config.get("config") or {}).get("Labels") or {})
        created = parse_time(config.get("created")) or _NEVER
        built = parse_time(labels.get(LABEL_CREATED)) or created
        found.append(RegistryImage(digest, tuple(sorted(names)), labels, built, created))
    return sorted(found, key=lambda i: (i.built, i.created, i.digest), reverse=True)


def newest_by_model(images: list[RegistryImage], promoted: dict[str, list[str]]) -> dict[str, list[str]]:
    """digest → "promoted" reasons: for each model an alias names, the newest image carrying it."""
    reasons: dict[str, list[str]] = {}
    for sha, aliases in promoted.items():
        newest = next((i for i in images if i.labels.get(LABEL_MODEL_SHA256) == sha), None)
        if newest is not None:
            reasons.setdefault(newest.digest, []).append(f"the newest image of the promoted model {', '.join(aliases)}")
    return reasons


def prune(settings: Any, protections: Protections, report: Report, *, keep: int,
          client: RegistryClient | None = None) -> None:  # fmt: skip
    """Delete the repository's images beyond the `keep` newest that nothing protects; reclaim their blobs."""
    repository = settings.image_repository
    own = client is None
    try:
        client = client or RegistryClient.from_connection(settings.registry_conn_id)
        images = list_images(client, repository)
    except Exception as exc:
        report.fail(AREA, repository, f"could not list the repository's images: {exc}")
        return
    try:
        promoted = newest_by_model(images, protections.promoted)
        deleted = 0
        for rank, image in enumerate(images):
            item = image.describe(f"{client.address}/{repository}")
            reasons = protections.image_reasons([image.digest], image.labels) + promoted.get(image.digest, [])
            if reasons:
                report.keep(AREA, item, "; ".join(reasons))
            elif rank < keep:
                report.keep(AREA, item, f"among the {keep} newest")
            else:
                why = f"not among the {keep} newest (built {image.built:%Y-%m-%d %H:%M}); {UNPROTECTED}"
                deleted += report.remove(AREA, item, why,
                                         lambda d=image.digest: client.delete_manifest(repository, d))  # fmt: skip
        if deleted:
            collect_garbage(settings, report)
        elif not report.dry_run:
            report.note("registry: nothing deleted, so no garbage collection")
    finally:
        if own and client is not None:
            client.close()


def collect_garbage(settings: Any, report: Report) -> None:
    """Reclaim the blobs of the deleted manifests: MODELSHIP_REGISTRY_GC_COMMAND where this deployment owns the
    registry (`make up` sets it: the local registry is stopped for the seconds it takes, so no push can lose a
    layer to it). ACR needs nothing: it frees a deleted manifest's unique layers itself."""
    command = settings.registry_gc_command.strip()
    if not command:
        report.note("registry: the deleted images' blobs stay until the registry's own garbage collection runs "
                    "(MODELSHIP_REGISTRY_GC_COMMAND is not set; ACR reclaims them by itself)")  # fmt: skip
        return

    def run() -> None:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=1800)
        for line in (done.stdout + done.stderr).strip().splitlines()[-5:]:
            log.info("registry gc | %s", line)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"{command} exited {done.returncode}: {' / '.join(said)}")

    report.remove(AREA, "unreferenced blobs", f"manifests were deleted; reclaimed by `{command}`", run)
