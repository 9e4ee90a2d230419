"""The lineage of every artifact, in one place: the Assets, the typed artifacts, and every label and
annotation key that carries lineage on an image, a container or a Kubernetes object.

The Assets are the chain users follow in the Airflow UI: model (promoted version) → image (built,
smoke-tested, pushed) → deployment (serving, verified). `deployments` records every deployment attempt
(successes, failures, rollbacks: the history), `quarantine` every image a failed release set aside (and
every lift). Each event's extra is one of the artifacts below, as JSON with its `kind`.

Artifacts travel between tasks as XCom in the same JSON form (`as_dict`); `from_xcom` gives the typed
artifact back, and modelship.openlineage maps each type to OpenLineage datasets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from airflow.sdk import Asset

MODEL = Asset(name="model", uri="modelship://model")
IMAGE = Asset(name="image", uri="modelship://image")
DEPLOYMENT = Asset(name="deployment", uri="modelship://deployment")
DEPLOYMENTS = Asset(name="deployments", uri="modelship://deployments")
QUARANTINE = Asset(name="quarantine", uri="modelship://quarantine")

# OCI labels every modelship image carries (the Dockerfile turns the build args into them).
LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_MODEL_NAME = "io.modelship.model.name"
LABEL_MODEL_VERSION = "io.modelship.model.version"
LABEL_MODEL_SHA256 = "io.modelship.model.sha256"

# Labels of the docker target's containers (the model keys are the image's own).
CONTAINER_ROLE = "io.modelship.role"  # "app" (serving or its stopped predecessor) | "candidate"
CONTAINER_COMMIT = "io.modelship.commit"
CONTAINER_IMAGE = "io.modelship.image"
CONTAINER_IMAGE_DIGEST = "io.modelship.image.digest"
CONTAINER_DEPLOYED_AT = "io.modelship.deployed-at"
CONTAINER_PORT = "io.modelship.port"  # the serving port a container belongs to (also on its candidates)
CONTAINER_BIND = "io.modelship.bind"  # where it listens: the serving port, or a spare one for a candidate

# Annotations of the kubernetes target's Deployment and pod template (each ReplicaSet keeps its own copy).
ANN_COMMIT = "modelship.io/commit"
ANN_MODEL_VERSION = "modelship.io/model-version"
ANN_MODEL_SHA256 = "modelship.io/model-sha256"
ANN_IMAGE_DIGEST = "modelship.io/image-digest"
ANN_DEPLOYED_AT = "modelship.io/deployed-at"  # Deployment metadata only (not the template)

A = TypeVar("A", bound="Artifact")


@dataclass(frozen=True)
class Artifact:
    """A typed artifact; its JSON form (`as_dict`) carries `kind` so it can be told apart anywhere."""

    KIND: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[A], data: Mapping[str, Any]) -> A:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self: A, **changes: Any) -> A:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelEvent(Artifact):
    """A promoted model version (model_refresh → `model`)."""

    KIND: ClassVar[str] = "model"
    name: str
    version: str
    sha256: str  # manifest sha256: the model version's identity
    accuracy: float


@dataclass(frozen=True)
class ValidatedModel(ModelEvent):
    """A model version that passed its gates (not yet promoted); `promoted_before` is where the alias pointed."""

    KIND: ClassVar[str] = "validated_model"
    promoted_before: str | None = None


@dataclass(frozen=True)
class Build(Artifact):
    """What one ci run builds: the exact commit and model, and how far the build has come."""

    KIND: ClassVar[str] = "build"
    commit: str
    model_name: str
    model_version: str
    model_sha256: str
    tag: str  # <short commit>-<model version>
    repository: str  # registry/repo, e.g. 127.0.0.1:5000/modelship/digits-app
    workspace: str
    already_pushed: str | None = None  # the digest, when the registry has exactly this image already
    subject: str = ""
    model_dir: str = ""
    image_id: str = ""
    local_tag: str = ""


@dataclass(frozen=True)
class ImageEvent(Artifact):
    """An image that passed ci and is in the registry (ci → `image`)."""

    KIND: ClassVar[str] = "image"
    repository: str
    tag: str
    digest: str  # sha256:… manifest digest in the registry
    commit: str
    model_version: str
    model_sha256: str
    model_name: str = ""
    rebuilt: bool = True  # False: ci found exactly this image already pushed and announced it again
    layers_pushed: int = 0
    bytes_pushed: int = 0

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class ReleaseImage(Artifact):
    """The image a release deploys, by digest, with its lineage read from its own labels."""

    KIND: ClassVar[str] = "release_image"
    image: str  # registry/repository@sha256:…
    digest: str
    commit: str
    model_name: str
    model_version: str
    model_sha256: str
    why: str = ""  # how it was chosen: the desired state, or the `image` param


@dataclass(frozen=True)
class DeploymentEvent(Artifact):
    """What serves after a successful release (release → `deployment`)."""

    KIND: ClassVar[str] = "deployment"
    target: str
    image_digest: str
    image: str  # repository@digest
    commit: str
    model_version: str
    revision: str  # target-specific: Deployment revision or container id
    model_sha256: str = ""
    changed: bool = True  # False: this exact build already served, verified; nothing was touched


@dataclass(frozen=True)
class DeploymentRecord(Artifact):
    """One deployment attempt, whatever its outcome (release → `deployments`): the history."""

    KIND: ClassVar[str] = "deployment_record"
    OUTCOMES: ClassVar[tuple[str, ...]] = ("deployed", "rolled_back", "failed")
    target: str
    image: str
    image_digest: str
    commit: str
    model_version: str
    outcome: str  # deployed | rolled_back (failed, the previous build serves again) | failed (nothing serves)
    started_at: str  # ISO 8601, UTC
    ended_at: str
    dag_id: str = ""
    run_id: str = ""
    reason: str = ""
    model_sha256: str = ""
    revision: str = ""
    # What serves once the attempt is over: the new build, the one rolled back to, or nothing ({}).
    serving_after: dict[str, str] = field(default_factory=dict)
    approved_by: str = ""


@dataclass(frozen=True)
class Approval(Artifact):
    """A person's answer to a release's approval gate, or that the target has no gate (`required` False)."""

    KIND: ClassVar[str] = "approval"
    target: str
    image: str  # registry/repository@sha256:… the release would deploy
    required: bool
    approved: bool
    by: str = ""  # who answered ("" when nobody did)
    at: str = ""  # ISO 8601, UTC
    reason: str = ""  # what they wrote, or why nobody's answer counts (timed out)


@dataclass(frozen=True)
class Quarantine(Artifact):
    """An image set aside by a failed release (action "quarantined"), or its lift ("released")."""

    KIND: ClassVar[str] = "quarantine"
    digest: str
    action: str  # quarantined | released
    at: str  # ISO 8601, UTC
    image: str = ""
    commit: str = ""
    model_version: str = ""
    reason: str = ""
    target: str = ""
    run_id: str = ""
    by: str = ""


KINDS: dict[str, type[Artifact]] = {
    cls.KIND: cls
    for cls in (ModelEvent, ValidatedModel, Build, ImageEvent, ReleaseImage, DeploymentEvent, DeploymentRecord,
                Approval, Quarantine)  # fmt: skip
}


def from_xcom(value: Any) -> Any:
    """The typed artifact for an artifact's JSON form (a dict with its `kind`); anything else unchanged."""
    if isinstance(value, dict) and value.get("kind") in KINDS:
        return KINDS[value["kind"]].from_dict(value)
    return value


def to_xcom(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Artifact) else value


def commits_asset(repo: str, branch: str, poll_interval: float | None = None, local_check: float = 1.0) -> Asset:
    """New commits on the source branch, announced by a watcher in the triggerer (starts CI once each; how often it
    looks: modelship.source.NewCommitTrigger)."""
    from airflow.sdk import AssetWatcher

    from modelship.source import NewCommitTrigger

    trigger = NewCommitTrigger(repo=repo, branch=branch, poll_interval=poll_interval, local_check=local_check)
    return Asset(
        name="commits",
        uri="modelship://commits",
        watchers=[AssetWatcher(name="source_commits", trigger=trigger)],
    )
