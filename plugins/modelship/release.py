"""The release pipeline's steps: what the `release` DAG's tasks call.

select an image (the newest that passed CI, or the one asked for) → prove it exists in the registry by
digest and read its lineage from its own labels → deploy it to the target, which verifies /version and
rolls back on failure. The image's labels are the one source of its lineage: an Asset event or a param
can point at an image, but only the image says what it was built from.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from modelship.deploy import get_target
from modelship.registry import (
    LABEL_MODEL_NAME,
    LABEL_MODEL_SHA256,
    LABEL_MODEL_VERSION,
    LABEL_REVISION,
    RegistryClient,
)
from modelship.settings import Settings

log = logging.getLogger(__name__)

# registry/repository then :tag or @sha256:digest, e.g. 127.0.0.1:5000/modelship/digits-app@sha256:ab…
_IMAGE_REF = re.compile(
    r"^(?P<registry>[^/]+)/(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+)|@(?P<digest>sha256:[0-9a-f]{64}))$"
)


class ReleaseError(ValueError):
    """Nothing deployable: a malformed image param, or an image not in the registry or not built by ci."""


class NothingToRelease(Exception):
    """No image has passed CI yet and none was named: the run has nothing to do (like ci's NothingToBuild)."""


def parse_image(ref: str) -> tuple[str, str, str]:
    """(registry, repository, tag-or-digest) of a full image reference; ReleaseError names a bad one."""
    match = _IMAGE_REF.match(ref.strip())
    if not match:
        raise ReleaseError(
            f"param 'image' {ref!r} is not an image reference like REGISTRY/REPOSITORY@sha256:DIGEST or :TAG"
        )
    return match["registry"], match["repository"], match["tag"] or match["digest"]


def select_image(requested: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The image to deploy, by digest, with its lineage read from the registry."""
    settings = Settings.get()
    if requested.strip():
        registry_addr, repository, reference = parse_image(requested)
    elif events:
        newest = events[-1]
        registry_addr, repository, _ = parse_image(f"{newest['repository']}@{newest['digest']}")
        reference = newest["digest"]
        log.info(
            "newest image that passed CI: %s:%s (%s)", newest["repository"], newest["tag"], newest["digest"]
        )
    else:
        raise NothingToRelease(
            "no image has passed CI yet (no `image` Asset event) and none was named: nothing to release"
        )
    registry = RegistryClient.from_connection(settings.registry_conn_id)
    try:
        if registry.address != registry_addr:
            raise ReleaseError(
                f"image {registry_addr}/{repository} is not in the registry of connection "
                f"{settings.registry_conn_id!r} ({registry.address})"
            )
        digest = registry.digest(repository, reference)
        if digest is None:
            raise ReleaseError(f"{registry_addr}/{repository}:{reference} is not in the registry")
        labels = registry.labels(repository, digest)
    finally:
        registry.close()
    image = {
        "image": f"{registry_addr}/{repository}@{digest}",
        "digest": digest,
        "commit": labels.get(LABEL_REVISION, ""),
        "model_name": labels.get(LABEL_MODEL_NAME, ""),
        "model_version": labels.get(LABEL_MODEL_VERSION, ""),
        "model_sha256": labels.get(LABEL_MODEL_SHA256, ""),
    }
    if not image["commit"] or not image["model_version"]:
        raise ReleaseError(f"{image['image']} has no lineage labels (commit, model version): not built by ci")
    log.info("releasing %s: commit %s, model %s %s", image["image"], image["commit"], image["model_name"],
             image["model_version"])  # fmt: skip
    return image


def deploy(target_name: str, image: dict[str, Any]) -> dict[str, Any]:
    """Deploy and verify on the target; returns the `deployment` Asset event's extra."""
    settings = Settings.get()
    target = get_target(target_name or settings.deploy_target, settings)
    event = target.deploy(image["image"], image)
    return dict(event)
