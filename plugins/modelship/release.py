"""The release pipeline's steps: what the `release` DAG's tasks call.

select the image (the desired state, or the one the `image` param names) → prove it exists in the registry
by digest and read its lineage from its own labels → deploy it to the target, which verifies /version and
rolls back on failure → record the attempt (the `deployments` history) and, when it failed, quarantine the
image so no scheduled release tries it again. The image's labels are the one source of its lineage: an
Asset event or a param can point at an image, but only the image says what it was built from.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from modelship import desired, retry
from modelship.deploy import DeploymentFailed, get_target
from modelship.lineage import (
    LABEL_MODEL_NAME,
    LABEL_MODEL_SHA256,
    LABEL_MODEL_VERSION,
    LABEL_REVISION,
    DeploymentEvent,
    DeploymentRecord,
    ImageEvent,
    Quarantine,
    ReleaseImage,
)
from modelship.registry import RegistryClient
from modelship.settings import Settings
from modelship.verdicts import NothingToDo, Verdict

log = logging.getLogger(__name__)

# registry/repository then :tag or @sha256:digest, e.g. 127.0.0.1:5000/modelship/digits-app@sha256:ab…
_IMAGE_REF = re.compile(
    r"^(?P<registry>[^/]+)/(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+)|@(?P<digest>sha256:[0-9a-f]{64}))$"
)


class ReleaseError(Verdict, ValueError):
    """Nothing deployable: a malformed image param, or an image not in the registry or not built by ci."""


class NothingToRelease(NothingToDo):
    """The desired state names no image yet (nothing passed ci, or ci is building it): nothing to do now."""


class Quarantined(NothingToDo):
    """The image a release would deploy failed a release before; a scheduled release leaves it alone."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_image(ref: str) -> tuple[str, str, str]:
    """(registry, repository, tag-or-digest) of a full image reference; ReleaseError names a bad one."""
    match = _IMAGE_REF.match(ref.strip())
    if not match:
        raise ReleaseError(
            f"param 'image' {ref!r} is not an image reference like REGISTRY/REPOSITORY@sha256:DIGEST or :TAG"
        )
    return match["registry"], match["repository"], match["tag"] or match["digest"]


def select_image(
    requested: str,
    force: bool,
    images: Sequence[ImageEvent],
    quarantines: Sequence[Quarantine],
    settings: Settings | None = None,
) -> ReleaseImage:
    """The image to deploy, by digest, with its lineage read from the registry.

    Without `requested`: the desired state (modelship.desired). A quarantined digest is skipped unless `force`.
    """
    settings = settings or Settings.get()
    if requested.strip():
        registry_addr, repository, reference = parse_image(requested)
        why = f"named by the image param ({requested.strip()})"
    elif not images:
        raise NothingToRelease(
            "no image has passed CI yet (no `image` Asset event) and none was named: nothing to release"
        )
    else:
        want = desired.current(images, quarantines, settings)
        if want.image is None:
            raise NothingToRelease(f"{want.reason}: nothing to release now; what serves keeps serving")
        registry_addr, repository, _ = parse_image(want.image.ref)
        reference = want.image.digest
        why = f"the desired state: {want.reason}"
    image = _from_registry(settings, registry_addr, repository, reference, why)
    quarantine = desired.in_quarantine(quarantines).get(image.digest)
    if quarantine is not None:
        if not force:
            raise Quarantined(
                f"{desired.quarantine_notice(quarantine)}. What serves keeps serving; to retry it on purpose, "
                "trigger release with image=<this digest> and force=true, or lift the quarantine "
                "(modelship image release-quarantine DIGEST)"
            )
        log.warning("deploying %s although it is quarantined (force=true): %s", image.image,
                    desired.quarantine_notice(quarantine))  # fmt: skip
    log.info("releasing %s: commit %s, model %s %s (%s)", image.image, image.commit, image.model_name,
             image.model_version, why)  # fmt: skip
    return image


def _from_registry(settings: Settings, registry_addr: str, repository: str, reference: str, why: str) -> ReleaseImage:
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
    image = ReleaseImage(
        image=f"{registry_addr}/{repository}@{digest}",
        digest=digest,
        commit=labels.get(LABEL_REVISION, ""),
        model_name=labels.get(LABEL_MODEL_NAME, ""),
        model_version=labels.get(LABEL_MODEL_VERSION, ""),
        model_sha256=labels.get(LABEL_MODEL_SHA256, ""),
        why=why,
    )
    if not image.commit or not image.model_version:
        raise ReleaseError(f"{image.image} has no lineage labels (commit, model version): not built by ci")
    return image


def deploy(
    target_name: str,
    image: ReleaseImage,
    record: Callable[[DeploymentRecord], None],
    *,
    dag_id: str = "",
    run_id: str = "",
    approved_by: str = "",
) -> DeploymentEvent:
    """Deploy and verify on the target; every attempt is handed to `record`, whatever its outcome.

    A failed deployment (the target rolled back, or nothing served before) is a verdict: deploying it again
    would fail the same way. Anything else (an engine or API server outage) is left to the task's retries,
    and recorded as "interrupted": not the image's fault, so not a reason to quarantine it.
    """
    settings = Settings.get()
    target = get_target(target_name or settings.deploy_target, settings)
    started = now()

    def attempt(outcome: str, reason: str = "", revision: str = "") -> DeploymentRecord:
        return DeploymentRecord(
            target=target.name, image=image.image, image_digest=image.digest, commit=image.commit,
            model_version=image.model_version, model_sha256=image.model_sha256, outcome=outcome,
            started_at=started, ended_at=now(), dag_id=dag_id, run_id=run_id, reason=reason, revision=revision,
            serving_after=_serving(target), approved_by=approved_by,
        )  # fmt: skip

    try:
        event = target.deploy(image.image, image.as_dict())
    except DeploymentFailed as exc:
        result = attempt("failed", str(exc))
        if result.serving_after:
            result = result.replace(outcome="rolled_back")
        record(result)
        raise
    except Exception as exc:
        record(attempt("interrupted", f"{type(exc).__name__}: {retry.first_line(exc)}"))
        raise
    if event.changed:
        record(attempt("deployed", revision=event.revision))
    return event


def _serving(target: Any) -> dict[str, str]:
    """What serves on the target now, by its own account ({} when nothing does, or it cannot say)."""
    try:
        status = target.status()
    except Exception as exc:  # the record must not be lost to a second failure
        log.warning("could not read what serves on %s after the attempt: %s", target.name, exc)
        return {}
    if not status.get("serving"):
        return {}
    return {k: str(status.get(k) or "") for k in ("image_digest", "commit", "model_version", "image")}


def recorded(record: dict[str, Any] | None) -> DeploymentRecord:
    """The attempt the deploy task recorded, for the `deployments` history (skip when there was none)."""
    if not record:
        raise NothingToDo("the deploy task recorded no attempt (it did not get as far as the target)")
    return DeploymentRecord.from_dict(record)


def quarantine_of(record: dict[str, Any] | None) -> Quarantine:
    """The quarantine a failed attempt puts its image in (skip when it did not fail the image's way)."""
    attempt = recorded(record)
    if attempt.outcome not in ("rolled_back", "failed"):
        raise NothingToDo(f"{attempt.image_digest} was {attempt.outcome}: nothing to quarantine")
    return Quarantine(
        digest=attempt.image_digest, action="quarantined", at=attempt.ended_at, image=attempt.image,
        commit=attempt.commit, model_version=attempt.model_version, reason=attempt.reason, target=attempt.target,
        run_id=attempt.run_id,
    )  # fmt: skip
