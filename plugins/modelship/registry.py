"""Registry v2 API queries: tags, digests, labels (the image's lineage), with credentials from a connection.

CI asks "is this commit + model already pushed?" (`already_pushed`: the tag exists AND its labels name the
same commit and model sha256, so a re-run skips the build but a re-used tag is never trusted blindly), and
release asks "does this digest exist?" (`exists`). Both only read the registry, so they use its HTTP API
directly instead of a Docker engine. Retention (modelship.retention) deletes manifests by digest
(`delete_manifest`); the blobs they leave are the registry's own garbage collection's to reclaim.

Authentication: HTTP Basic with the connection's login/password first (the local Distribution registry
with htpasswd, and ACR with admin or service-principal credentials, accept it). A registry that answers
401 with a Bearer challenge (Docker Hub style, ACR for some clients) gets the token flow: the same Basic
credentials are exchanged at the challenge's realm for a token scoped to the repository.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import requests

from modelship import retry
from modelship.lineage import LABEL_MODEL_SHA256, LABEL_REVISION

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Without an explicit Accept a registry may down-convert to schema 1, whose digest differs from the
# one `docker push` reported; with all four it returns the manifest exactly as pushed.
MANIFEST_ACCEPT = ", ".join((DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX))
_LISTS = (DOCKER_MANIFEST_LIST, OCI_INDEX)

_RETRY_STATUS = retry.TRANSIENT_STATUS
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$")


class RegistryError(RuntimeError):
    """A registry request failed; the message names the registry, the request and what came back."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or their absence)."""


class RegistryNotFound(RegistryError):
    """The repository, tag or digest does not exist in the registry."""


def registry_address(host: str, port: int | None = None) -> str:
    """'host[:port]' as Docker spells a registry in an image reference: no scheme, no trailing slash."""
    address = re.sub(r"^[a-z]+://", "", host.strip()).rstrip("/")
    if port and ":" not in address:
        address = f"{address}:{port}"
    return address


def _base_url(host: str, port: int | None) -> str:
    """Honour an explicit scheme; otherwise plain HTTP only on loopback (as dockerd does), HTTPS elsewhere."""
    match = re.match(r"^(https?)://", host.strip())
    address = registry_address(host, port)
    scheme = match.group(1) if match else ("http" if _LOOPBACK.match(address) else "https")
    return f"{scheme}://{address}"


class RegistryClient:
    """A small client for one registry's v2 API: reads, and deleting a manifest by digest."""

    def __init__(
        self,
        address: str,
        username: str | None = None,
        password: str | None = None,
        *,
        port: int | None = None,
        conn_id: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.address = registry_address(address, port)
        self.base_url = _base_url(address, port)
        self.username = username or None
        # Kept private and out of repr/logs: only the connection id and user name are ever shown.
        self._password = password or None
        self.conn_id = conn_id
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment must never see registry traffic
        self._tokens: dict[str, str] = {}  # scope → bearer token, for registries that want the token flow

    @classmethod
    def from_connection(cls, conn_id: str, **kwargs: Any) -> RegistryClient:
        """Build from an Airflow connection (conn type docker: host = registry, login, password)."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        if not conn.host:
            raise RegistryError(f"connection {conn_id!r} has no host (the registry address)")
        return cls(conn.host, conn.login, conn.password, port=conn.port, conn_id=conn_id, **kwargs)

    def __repr__(self) -> str:
        return f"RegistryClient({self.address!r}, user={self.username!r}, conn_id={self.conn_id!r})"

    def close(self) -> None:
        self._session.close()

    # ---------------------------------------------------------------- queries

    def tags(self, repository: str) -> list[str]:
        """All tags of a repository, sorted; [] when the repository does not exist (yet)."""
        found: list[str] = []
        url: str | None = f"/v2/{repository}/tags/list?n=1000"
        while url:
            response = self._request("GET", url, repository)
            if response.status_code == 404:
                return []
            self._check(response, f"list tags of {repository}")
            found.extend(response.json().get("tags") or [])
            # Registries paginate with an RFC 5988 Link header: <...>; rel="next".
            url = response.links.get("next", {}).get("url")
        return sorted(found)

    def digest(self, repository: str, reference: str) -> str | None:
        """The manifest digest (sha256:…) a tag or digest resolves to, or None when it does not exist."""
        response = self._request("HEAD", f"/v2/{repository}/manifests/{reference}", repository)
        if response.status_code == 404:
            return None
        self._check(response, f"resolve {repository}:{reference}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        # Some registries omit the header on HEAD; the digest is the sha256 of the manifest bytes.
        manifest = self._request("GET", f"/v2/{repository}/manifests/{reference}", repository)
        self._check(manifest, f"fetch manifest {repository}:{reference}")
        return "sha256:" + hashlib.sha256(manifest.content).hexdigest()

    def exists(self, repository: str, reference: str) -> bool:
        """Whether a tag or digest (sha256:…) exists in the repository."""
        return self.digest(repository, reference) is not None

    def labels(self, repository: str, reference: str) -> dict[str, str]:
        """The image's labels (config.Labels): manifest → config blob. RegistryNotFound if absent."""
        return dict((self.config(repository, reference).get("config") or {}).get("Labels") or {})

    def config(self, repository: str, reference: str) -> dict[str, Any]:
        """The image's config blob (labels under config.Labels, the build time under created).
        RegistryNotFound if the manifest is absent."""
        manifest = self._manifest(repository, reference)
        if manifest.get("mediaType") in _LISTS or "manifests" in manifest:
            # A multi-platform image: the labels live in each platform's config; take linux/amd64.
            chosen = _pick_platform(manifest.get("manifests") or [])
            if chosen is None:
                raise RegistryError(f"{self.address}/{repository}@{reference}: empty manifest list")
            manifest = self._manifest(repository, chosen["digest"])
        config_digest = (manifest.get("config") or {}).get("digest")
        if not config_digest:
            raise RegistryError(f"{self.address}/{repository}@{reference}: manifest has no config blob")
        response = self._request("GET", f"/v2/{repository}/blobs/{config_digest}", repository)
        self._check(response, f"fetch config {config_digest} of {repository}")
        return response.json()

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest by digest, and with it every tag that names it; False when it was already gone.

        Deleting needs the registry's consent: Distribution's `storage.delete.enabled: true`, on ACR the
        AcrDelete role (AcrPush alone cannot delete). The blobs stay until the registry's garbage collection
        (Distribution: `registry garbage-collect <config>`; ACR reclaims them itself).
        """
        if not digest.startswith("sha256:"):
            raise RegistryError(f"refusing to delete {repository}:{digest}: delete by digest (sha256:…), never by tag")
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", repository, action="delete")
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise RegistryError(
                f"registry {self.address} does not allow deleting manifests (HTTP 405 {_errors(response)}): "
                "Distribution needs storage.delete.enabled: true (REGISTRY_STORAGE_DELETE_ENABLED=true)"
            )
        self._check(response, f"delete {repository}@{digest}")
        return True

    def already_pushed(self, repository: str, tag: str, *, commit: str, model_sha256: str) -> str | None:
        """The digest of repository:tag if it exists AND its labels name this commit and model, else None.

        A tag alone proves nothing (tags move, a failed run may have pushed something else), so CI skips
        a build only when the image's own lineage matches what it would build.
        """
        digest = self.digest(repository, tag)
        if digest is None:
            return None
        labels = self.labels(repository, digest)
        if labels.get(LABEL_REVISION) == commit and labels.get(LABEL_MODEL_SHA256) == model_sha256:
            return digest
        log.info(
            "%s/%s:%s exists but its labels (commit %s, model sha256 %s) do not match (commit %s, model %s)",
            self.address, repository, tag, labels.get(LABEL_REVISION), labels.get(LABEL_MODEL_SHA256),
            commit, model_sha256,
        )  # fmt: skip
        return None

    # ---------------------------------------------------------------- plumbing

    def _manifest(self, repository: str, reference: str) -> dict[str, Any]:
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", repository)
        if response.status_code == 404:
            raise RegistryNotFound(f"{self.address}/{repository}@{reference}: no such manifest")
        self._check(response, f"fetch manifest {repository}:{reference}")
        return response.json()

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code == 401:
            who = f"connection {self.conn_id!r}" if self.conn_id else f"user {self.username!r}"
            if not self.username:
                who = "an anonymous client (no credentials)"
            raise RegistryAuthError(
                f"registry {self.address} refused the credentials of {who} ({what}: HTTP 401 {_errors(response)})"
            )
        if response.status_code == 403:
            raise RegistryAuthError(
                f"registry {self.address} denied {what} to {self.username!r} "
                f"(connection {self.conn_id!r}): HTTP 403 {_errors(response)}"
            )
        if response.status_code >= 400:
            raise RegistryError(
                f"registry {self.address}: {what} failed: HTTP {response.status_code} {_errors(response)}"
            )

    def _request(self, method: str, path: str, repository: str, action: str = "pull") -> requests.Response:
        """One request (retried, see _send_retrying); a Bearer challenge switches to the token flow once."""
        url = urljoin(self.base_url, path)
        scope = f"repository:{repository}:{action}"
        headers = {"Accept": MANIFEST_ACCEPT} if "/manifests/" in path else {}
        response = self._send_retrying(method, url, headers, scope)
        if response.status_code == 401 and self.username:
            # Basic refused (or the cached token expired): exchange the credentials for a fresh token, once.
            challenge = response.headers.get("WWW-Authenticate", "")
            if challenge.lower().startswith("bearer "):
                self._tokens[scope] = self._token(challenge, scope)
                response = self._send_retrying(method, url, headers, scope)
        return response

    def _send_retrying(self, method: str, url: str, headers: dict[str, str], scope: str) -> requests.Response:
        """Retry with exponential backoff on connection errors and 429/5xx; the last answer is returned."""

        def send() -> requests.Response:
            token = self._tokens.get(scope)
            auth = None
            if token:
                extra = {"Authorization": f"Bearer {token}"}
            else:
                extra = {}
                auth = (self.username, self._password or "") if self.username else None
            response = self._session.request(method, url, headers={**headers, **extra}, auth=auth, timeout=self.timeout)
            if response.status_code in _RETRY_STATUS:
                raise _RetryableStatus(response)
            return response

        return self._retrying(send, f"{method} {url}")

    def _retrying(self, send: Callable[[], requests.Response], what: str) -> requests.Response:
        policy = retry.Policy(attempts=self.attempts, base=self.backoff, max_delay=self.backoff * 2**self.attempts)
        try:
            return retry.call(send, f"registry {self.address}: {what}", policy=policy, logger=log)
        except _RetryableStatus as exc:
            return exc.response  # still failing after the retries: let _check describe it
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryError(
                f"registry {self.address} unreachable after {self.attempts} attempts ({what}): {exc}"
            ) from exc

    def _token(self, challenge: str, scope: str) -> str:
        """Exchange the Basic credentials for a bearer token at the challenge's realm (token auth spec)."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise RegistryError(f"registry {self.address}: bearer challenge without realm: {challenge!r}")
        params["scope"] = scope
        auth = (self.username or "", self._password or "")

        def send() -> requests.Response:
            response = self._session.get(realm, params=params, auth=auth, timeout=self.timeout)
            if response.status_code in _RETRY_STATUS:
                raise _RetryableStatus(response)
            return response

        response = self._retrying(send, f"GET {realm}")
        self._check(response, "token exchange")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"registry {self.address}: token endpoint {realm} returned no token")
        return token


class _RetryableStatus(retry.Transient):
    """A 429/5xx answer, raised only so the retry policy retries it."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _pick_platform(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    for entry in manifests:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    return manifests[0] if manifests else None


def _errors(response: requests.Response) -> str:
    """The registry's error codes/messages (its JSON error body), short; never the request's headers."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        text = response.text[:200]
    return text or response.reason or ""
