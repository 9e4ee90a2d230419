"""Deploy targets: put an image, pinned by digest, in service and prove what serves.

One module per target: ``docker.py`` (one host, the embedded default) and ``kubernetes.py`` (AKS or any
cluster a kubeconfig reaches). Every target verifies that what answers ``GET /version`` is what was built
(commit and model version), rolls back on failure, and raises :class:`DeploymentFailed` saying what
failed and what serves now. The /version check lives in verify.py, once, for both targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from modelship.deploy.verify import VerificationFailed, check_version, expected_lineage, verify_version
from modelship.verdicts import Verdict

__all__ = [
    "DeploymentFailed", "Target", "VerificationFailed", "check_version", "expected_lineage", "get_target",
    "verify_version",
]  # fmt: skip

if TYPE_CHECKING:
    from modelship.lineage import DeploymentEvent
    from modelship.settings import Settings


class DeploymentFailed(Verdict, Exception):
    """A deployment did not end with the new image verified and serving; the message says what serves now.
    The previous build has been restored (or nothing served before): deploying again would fail the same way."""


class Target(Protocol):
    """What the release DAG needs from any target."""

    name: str

    def deploy(self, image: str, lineage: Mapping[str, Any]) -> DeploymentEvent:
        """Serve ``image`` (repository@sha256:…), verify it, or roll back and raise DeploymentFailed."""
        ...

    def status(self) -> dict[str, Any]:
        """What serves now: image digest, commit, model version, since when (from the target alone)."""
        ...

    def revisions(self) -> list[dict[str, Any]]:
        """Every build the target keeps and could return to by itself (what serves included): image digest,
        commit, model version and sha256, and where it is kept. Retention never deletes these."""
        ...


def get_target(name: str, settings: Settings) -> Target:
    """The target called ``name`` ("docker" or "kubernetes"), configured from settings."""
    if name == "docker":
        from modelship.deploy.docker import DockerTarget

        return DockerTarget(
            docker_host=settings.docker_host,
            port=settings.docker_deploy_port,
            registry_conn_id=settings.registry_conn_id,
        )
    if name == "kubernetes":
        from modelship.deploy.kubernetes import KubernetesTarget

        return KubernetesTarget(
            conn_id=settings.kube_conn_id,
            namespace=settings.kube_namespace,
            overlay_dir=settings.overlay_dir,
            registry_conn_id=settings.registry_conn_id,
            rollout_timeout=settings.rollout_timeout,
        )
    raise ValueError(f"unknown deploy target {name!r}: expected 'docker' or 'kubernetes'")
