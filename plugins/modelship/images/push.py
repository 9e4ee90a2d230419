"""Push a smoke-tested image to the registry of the registry connection; the digest it returns is what
everything downstream refers to."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker
import requests
import urllib3

from modelship import retry
from modelship.images.engine import EngineUnavailable, api_of, engine_name, engine_still_there
from modelship.registry import registry_address

if TYPE_CHECKING:
    from modelship.images.engine import DockerLike

log = logging.getLogger("modelship.images")


class ImagePushError(RuntimeError):
    """The push failed: refused credentials, an unreachable registry (after retries), or a stream error."""


@dataclass(frozen=True)
class Pushed:
    """What a push did: the registry's manifest digest, and the layers (and their bytes) it had to send."""

    digest: str
    layers_pushed: int = 0
    layers_existing: int = 0  # already in the registry: nothing sent
    bytes_pushed: int = 0


# Errors inside the push stream that say "try again later" rather than "this will never work": the connection
# broke (refused, reset or cut mid-layer), or the registry answered a server-side error (dockerd reports any
# 5xx as "received unexpected HTTP status: 500 Internal Server Error" and does not retry it itself).
_TRANSIENT_PUSH = (
    "connection refused", "connection reset", "i/o timeout", "tls handshake timeout", "broken pipe",
    "unexpected eof", ": eof", "use of closed network connection", "server closed idle connection",
    "500 internal server error", "502 bad gateway", "503 service unavailable", "504 gateway", "429 too many requests",
    "408 request timeout", "client.timeout", "temporary failure",
)  # fmt: skip
_AUTH_PUSH = ("unauthorized", "authentication required", "no basic auth credentials", "denied")


class _TransientPushError(retry.Transient, ImagePushError):
    pass


def push_image(
    docker_like: DockerLike,
    image: str,
    repository: str,
    tag: str,
    *,
    registry_conn: str,
    attempts: int = 4,
    backoff: float = 2.0,
) -> Pushed:
    """Tag `image` as <registry>/<repository>:<tag>, push it; the registry's manifest digest and what was sent.

    The registry address and credentials come from the Airflow connection `registry_conn` (conn type
    docker): a DockerHook built on that connection logs in itself; a plain docker client gets the
    connection's credentials as the push's auth config (a connection without login pushes anonymously).
    docker-py reports push failures inside the stream, not as exceptions: every chunk is checked.
    Connection problems are retried with exponential backoff; refused credentials are not.
    """
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(registry_conn)
    if not conn.host:
        raise ImagePushError(f"connection {registry_conn!r} has no host (the registry address)")
    registry = registry_address(conn.host, conn.port)
    target = f"{registry}/{repository}"
    auth_config: dict[str, str] | None
    hook_conn = getattr(docker_like, "docker_conn_id", None)  # set on a DockerHook that logs in
    if hook_conn:
        if hook_conn != registry_conn:
            raise ImagePushError(f"the DockerHook logs into connection {hook_conn!r}, not {registry_conn!r}")
        auth_config = None  # the hook's login stored the credentials in its client
    elif conn.login:
        auth_config = {"username": conn.login, "password": conn.password or "", "serveraddress": registry}
    else:
        auth_config = {}  # anonymous: never fall back to whatever ~/.docker/config.json holds

    def connect() -> docker.APIClient:
        try:
            return api_of(docker_like)
        except docker.errors.APIError as exc:  # DockerHook's login is the first call on its client
            explanation = str(exc.explanation or exc)
            if any(word in explanation.lower() for word in _TRANSIENT_PUSH):  # down, not a refusal
                raise _TransientPushError(f"registry {registry} unreachable for the login: {explanation}") from exc
            raise ImagePushError(
                f"registry {registry} refused the credentials of connection {registry_conn!r}: {explanation}"
            ) from exc

    def retried(call: Any, what: str) -> Any:
        """call() with transient failures retried; the last one becomes an ImagePushError naming the attempts."""
        policy = retry.Policy(attempts=attempts, base=backoff, max_delay=backoff * 2**attempts)
        try:
            return retry.call(call, what, policy=policy, transient=lambda exc: isinstance(exc, _TransientPushError),
                              logger=log)  # fmt: skip
        except _TransientPushError as exc:
            raise ImagePushError(f"push of {target}:{tag} failed after {attempts} attempts: {exc}") from exc

    api = retried(connect, f"log in to {registry} to push {target}:{tag}")
    api.tag(image, target, tag=tag)
    log.info("pushing %s as %s:%s", image, target, tag)
    started = time.monotonic()

    def push_once() -> Pushed:
        try:
            stream = api.push(target, tag=tag, stream=True, decode=True, auth_config=auth_config)
            return _read_push_stream(stream, f"{target}:{tag}", registry, registry_conn)
        except ImagePushError as exc:
            if isinstance(exc, _TransientPushError):
                raise
            # An error the stream does not explain: the engine itself may have gone away mid-push.
            try:
                engine_still_there(api, f"the push of {target}:{tag}")
            except EngineUnavailable as gone:
                raise _TransientPushError(str(gone)) from exc
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, docker.errors.APIError) as exc:
            if not retry.is_transient(exc):
                raise
            # The connection to the engine broke (it stopped mid-push, or its stream was cut), or it answered 5xx.
            raise _TransientPushError(f"Docker engine {engine_name(api)} failed while pushing: {exc}") from exc

    pushed = retried(push_once, f"push {target}:{tag}")
    log.info("pushed %s:%s = %s in %.1fs: %d layers sent (%d bytes), %d already there", target, tag, pushed.digest,
             time.monotonic() - started, pushed.layers_pushed, pushed.bytes_pushed, pushed.layers_existing)  # fmt: skip
    return pushed


def _read_push_stream(stream: Any, ref: str, registry: str, conn_id: str) -> Pushed:
    digest: str | None = None
    last_status: dict[str, str] = {}
    sizes: dict[str, int] = {}  # layer → its size, from the upload's progress
    for chunk in stream:
        error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
        if error:
            lowered = error.lower()
            if any(word in lowered for word in _AUTH_PUSH):
                raise ImagePushError(
                    f"registry {registry} refused the credentials of connection {conn_id!r} pushing {ref}: {error}"
                )
            if any(word in lowered for word in _TRANSIENT_PUSH):
                raise _TransientPushError(f"pushing {ref}: {error}")
            raise ImagePushError(f"push of {ref} failed: {error}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
        status, layer = chunk.get("status"), chunk.get("id", "")
        total = (chunk.get("progressDetail") or {}).get("total")
        if layer and isinstance(total, int):
            sizes[layer] = max(sizes.get(layer, 0), total)
        # Log each layer's state changes, not its progress bar.
        if status and not chunk.get("progressDetail") and last_status.get(layer) != status:
            last_status[layer] = status
            log.info("  %s%s", f"{layer}: " if layer else "", status)
    if not digest:
        raise ImagePushError(f"push of {ref} ended without a digest from the registry")
    sent = [layer for layer, status in last_status.items() if layer and status == "Pushed"]
    existing = [layer for layer, status in last_status.items() if status in ("Layer already exists",)
                or status.startswith("Mounted from")]  # fmt: skip
    return Pushed(digest, len(sent), len(existing), sum(sizes.get(layer, 0) for layer in sent))
