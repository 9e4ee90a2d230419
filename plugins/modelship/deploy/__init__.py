"""Deploy targets: put an image, pinned by digest, in service and prove what serves.

One module per target: ``docker.py`` (one host, the embedded default) and ``kubernetes.py`` (AKS or any
cluster a kubeconfig reaches). Every target verifies that what answers ``GET /version`` is what was built
(commit and model version), rolls back on failure, and raises :class:`DeploymentFailed` saying what
failed and what serves now. The /version check lives here, once, for both targets.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from modelship.lineage import DeploymentEvent
    from modelship.settings import Settings


class DeploymentFailed(Exception):
    """A deployment did not end with the new image verified and serving; the message says what serves now."""


class VerificationFailed(Exception):
    """The app answered, but not with the build that was deployed, or did not answer at all."""


class Target(Protocol):
    """What the release DAG needs from any target."""

    name: str

    def deploy(self, image: str, lineage: Mapping[str, Any]) -> DeploymentEvent:
        """Serve ``image`` (repository@sha256:…), verify it, or roll back and raise DeploymentFailed."""
        ...

    def status(self) -> dict[str, Any]:
        """What serves now: image digest, commit, model version, since when (from the target alone)."""
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
            overlay_dir=_overlay_dir(settings),
            registry_conn_id=settings.registry_conn_id,
        )
    raise ValueError(f"unknown deploy target {name!r}: expected 'docker' or 'kubernetes'")


def _overlay_dir(settings: Settings) -> str:
    from modelship.settings import REPO_ROOT

    return str(REPO_ROOT / "k8s" / "overlays" / settings.kube_overlay)


def expected_lineage(lineage: Mapping[str, Any]) -> tuple[str, str]:
    """(commit, model version) a deployment must prove; both are required to verify anything."""
    commit, model_version = lineage.get("commit"), lineage.get("model_version")
    if not commit or not model_version:
        raise ValueError("lineage needs 'commit' and 'model_version' to verify the deployment")
    return str(commit), str(model_version)


def same_commit(expected: str, actual: str) -> bool:
    """Equal, or one is an abbreviation (≥ 7 hex digits) of the other: apps may report a short sha."""
    if expected == actual:
        return True
    shorter, longer = sorted((expected, actual), key=len)
    return len(shorter) >= 7 and longer.startswith(shorter)


def check_version(body: bytes | str, expected_commit: str, expected_model_version: str) -> dict[str, Any]:
    """Parse a /version body and raise VerificationFailed unless it names the expected build."""
    try:
        info = json.loads(body)
    except ValueError as exc:
        raise VerificationFailed(f"/version is not JSON: {str(body)[:200]!r}") from exc
    if not isinstance(info, dict):
        raise VerificationFailed(f"/version is not a JSON object: {str(body)[:200]!r}")
    commit = str(info.get("commit") or "")
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    model_version = str(model.get("version") or "")
    problems = []
    if not same_commit(expected_commit, commit):
        problems.append(f"commit {commit or '(none)'} != expected {expected_commit}")
    if model_version != expected_model_version:
        problems.append(f"model version {model_version or '(none)'} != expected {expected_model_version}")
    if problems:
        raise VerificationFailed("/version reports " + "; ".join(problems))
    return info


def verify_version(
    fetch: Callable[[float], bytes | str],
    expected_commit: str,
    expected_model_version: str,
    *,
    what: str,
    attempts: int = 5,
    timeout: float = 5.0,
    backoff: float = 0.5,
) -> dict[str, Any]:
    """GET /version through ``fetch(timeout)`` with retries, and check it names the expected build.

    Transport errors are retried with exponential backoff (an app or proxy can blip); a wrong answer is
    not: the app that answered is the wrong build, and asking again cannot change that.
    """
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            body = fetch(timeout)
        except Exception as exc:  # any transport or proxy error: retry, then report the last one
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff * 2**attempt)
            continue
        try:
            return check_version(body, expected_commit, expected_model_version)
        except VerificationFailed as exc:
            raise VerificationFailed(f"{what}: {exc}") from None
    raise VerificationFailed(f"{what}: GET /version failed {attempts} times, last: {last}") from last


def http_get(url: str, timeout: float) -> bytes:
    """GET a loopback URL; raise on any non-2xx status (urllib raises HTTPError for those)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own http URLs)
        return response.read()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        http_get(url, timeout)
    except (OSError, http.client.HTTPException):  # URLError and HTTPError are OSErrors
        return False
    return True
