"""Proving what serves: GET /version must name the build that was deployed (commit and model version).

Used by both targets: the docker target asks the container, the kubernetes target each new pod through the
API server's pod proxy. Transport errors are retried (modelship.retry); a wrong answer is not: the app that
answered is the wrong build, and asking again cannot change that.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from modelship import retry
from modelship.verdicts import Verdict


class VerificationFailed(Verdict, Exception):
    """The app answered, but not with the build that was deployed, or did not answer at all."""


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
    outage: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """GET /version through ``fetch(timeout)`` with retries, and check it names the expected build.

    Transport errors are retried with exponential backoff (an app or proxy can blip); a wrong answer is
    not: the app that answered is the wrong build, and asking again cannot change that. ``outage``: errors
    of what stands between us and the app (the Kubernetes API server), raised as they are: no answer from
    the way in says nothing about the app, so it is never a verdict on it.
    """
    policy = retry.Policy(attempts=attempts, base=backoff, max_delay=backoff * 2**attempts)
    try:
        # Any transport or proxy error (refused, reset, a proxy's 502, an app still starting) is worth asking again.
        body = retry.call(lambda: fetch(timeout), f"{what}: GET /version", policy=policy,
                          transient=lambda exc: not isinstance(exc, outage))  # fmt: skip
    except outage:
        raise
    except Exception as exc:
        raise VerificationFailed(f"{what}: GET /version failed {attempts} times, last: {exc}") from exc
    try:
        return check_version(body, expected_commit, expected_model_version)
    except VerificationFailed as exc:
        raise VerificationFailed(f"{what}: {exc}") from None


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
