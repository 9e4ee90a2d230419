"""Asset definitions and their extras, in one place.

The three Assets are the lineage chain users follow in the Airflow UI:
model (promoted version) → image (built, smoke-tested, pushed) → deployment (serving, verified).
Each event's extra carries the identifiers that link it to the previous one.
"""

from __future__ import annotations

from typing import TypedDict

from airflow.sdk import Asset

MODEL = Asset(name="model", uri="modelship://model")
IMAGE = Asset(name="image", uri="modelship://image")
DEPLOYMENT = Asset(name="deployment", uri="modelship://deployment")


class ModelEvent(TypedDict):
    name: str
    version: str
    sha256: str  # manifest sha256: the model version's identity
    accuracy: float


class ImageEvent(TypedDict):
    repository: str  # registry/repo, e.g. 127.0.0.1:5000/modelship/digits-app
    tag: str  # <short commit>-<model version>
    digest: str  # sha256:… manifest digest in the registry
    commit: str
    model_version: str
    model_sha256: str


class DeploymentEvent(TypedDict):
    target: str
    image_digest: str
    image: str  # repository@digest
    commit: str
    model_version: str
    revision: str  # target-specific: Deployment revision or container id


def commits_asset(repo: str, branch: str, poll_interval: float = 30.0) -> Asset:
    """New commits on the source branch, announced by a watcher in the triggerer (starts CI once each)."""
    from airflow.sdk import AssetWatcher

    from modelship.source import NewCommitTrigger

    trigger = NewCommitTrigger(repo=repo, branch=branch, poll_interval=poll_interval)
    return Asset(
        name="commits",
        uri="modelship://commits",
        watchers=[AssetWatcher(name="source_commits", trigger=trigger)],
    )
