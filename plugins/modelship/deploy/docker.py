"""Docker target: the app on one host's Docker engine, the embedded default.

The serving container binds one fixed loopback port (settings.docker_deploy_port). A release drops no
request, with no component in front of the port:

1. the new image starts as a *candidate* on a spare port only and is proven there: /readyz answers 200 and
   /version names the expected commit and model version. A bad image fails here; it never took a request.
2. the same image starts again as the new serving container, *beside* the old one: both bind the serving
   port with SO_REUSEPORT (the app's gunicorn sets it), so the kernel spreads new connections over both,
   and a second, private port (APP_VERIFY_BIND) lets it be proven on its own. If it fails, it is stopped
   and the old one never stopped serving.
3. the old container is stopped gracefully (SIGTERM: requests in flight finish) and removed. Requests still
   queued on its listeners move to the new server's listeners (net.ipv4.tcp_migrate_req=1, set here when
   allowed: Linux >= 5.14) instead of being reset.

An image without SO_REUSEPORT on either side (built before it) cannot share the port: then the old swap
runs, with a gap of the app's start-up time: stop the old container, start the new one, roll back to the old
one if the new one fails. A release cut off half-way (its worker killed) can leave nothing serving: the next
release first starts the last app container again (`heal`).

Containers run read-only with a tmpfs /tmp, all capabilities dropped, no-new-privileges, on the host
network (this machine has no bridge; the app binds 127.0.0.1). Their labels carry the lineage, so
``status()`` answers from the engine alone.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from modelship import lineage as keys
from modelship.deploy import DeploymentFailed
from modelship.deploy.verify import VerificationFailed, http_get, same_commit, verify_version
from modelship.lineage import DeploymentEvent
from modelship.net import ensure_tcp_migrate_req, free_port, port_open

if TYPE_CHECKING:
    from docker import APIClient

log = logging.getLogger(__name__)

NAME_PREFIX = "modelship-app-"


# What a server that cannot share the serving port says before it exits: the app's own start-up check
# ("cannot bind … Address already in use"), or an older gunicorn without SO_REUSEPORT ("Connection in use").
_CANNOT_SHARE = ("address already in use", "connection in use", "cannot bind")


class NotReady(Exception):
    """A container exited or did not answer /readyz with 200 in time."""


class DockerTarget:
    name = "docker"

    def __init__(
        self,
        docker_host: str,
        port: int,
        *,
        registry_conn_id: str | None = None,
        environment: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: int = 10,
        mem_limit: str = "1g",
        client: APIClient | None = None,
    ) -> None:
        self.docker_host = docker_host
        self.port = port
        self.registry_conn_id = registry_conn_id  # for pulling images the engine does not have yet
        self.environment = dict(environment or {})
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.mem_limit = mem_limit
        self._client = client  # for callers outside Airflow (python -m devstack up): no Airflow import needed

    @cached_property
    def api(self) -> APIClient:
        """The Docker provider's client for the engine, built on first use; no registry login (status())."""
        if self._client is not None:
            return self._client
        from airflow.providers.docker.hooks.docker import DockerHook

        return DockerHook(docker_conn_id=None, base_url=self.docker_host).api_client

    def _pull(self, image: str) -> None:
        """Pull through a client logged in with the registry connection, only when the image is missing."""
        from airflow.providers.docker.hooks.docker import DockerHook

        api = self.api
        if self.registry_conn_id:
            api = DockerHook(docker_conn_id=self.registry_conn_id, base_url=self.docker_host).api_client
        log.info("pulling %s", image)
        api.pull(image)

    # -- what is there -------------------------------------------------------------------------------------

    def _containers(self, role: str) -> list[dict[str, Any]]:
        """This target's containers: one engine can host several targets, one per serving port."""
        found = self.api.containers(
            all=True, filters={"label": [f"{keys.CONTAINER_ROLE}={role}", f"{keys.CONTAINER_PORT}={self.port}"]}
        )
        return list(found)

    def _current(self) -> dict[str, Any] | None:
        """The serving container; else the newest stopped app container (a deploy cut off mid-swap)."""
        apps = self._containers("app")
        running = [c for c in apps if c["State"] == "running"]
        pool = running or apps
        return max(pool, key=lambda c: c["Labels"].get(keys.CONTAINER_DEPLOYED_AT, ""), default=None)

    def status(self) -> dict[str, Any]:
        """What serves on the fixed port: image digest, commit, model version, since when (labels only)."""
        current = self._current()
        out: dict[str, Any] = {"target": self.name, "port": self.port}
        if current is None or current["State"] != "running":
            return {**out, "serving": False, "container": current["Names"][0].lstrip("/") if current else None}
        labels = current["Labels"]
        return {
            **out,
            "serving": True,
            "container": current["Names"][0].lstrip("/"),
            "revision": current["Id"][:12],
            "image": labels.get(keys.CONTAINER_IMAGE),
            "image_digest": labels.get(keys.CONTAINER_IMAGE_DIGEST),
            "commit": labels.get(keys.CONTAINER_COMMIT),
            "model_version": labels.get(keys.LABEL_MODEL_VERSION),
            "model_sha256": labels.get(keys.LABEL_MODEL_SHA256),
            "since": labels.get(keys.CONTAINER_DEPLOYED_AT),
            "health": container_health(current.get("Status", "")),
        }

    def revisions(self) -> list[dict[str, Any]]:
        """Every app container of this port, serving or stopped (a deploy cut off mid-swap keeps the old one)."""
        return [
            {
                "image_digest": c["Labels"].get(keys.CONTAINER_IMAGE_DIGEST),
                "commit": c["Labels"].get(keys.CONTAINER_COMMIT),
                "model_version": c["Labels"].get(keys.LABEL_MODEL_VERSION),
                "model_sha256": c["Labels"].get(keys.LABEL_MODEL_SHA256),
                "where": f"container {c['Names'][0].lstrip('/')} ({c['State']})",
            }
            for c in self._containers("app")
        ]

    # -- building blocks ---------------------------------------------------------------------------------

    def _inspect_image(self, image: str) -> dict[str, Any]:
        from docker.errors import ImageNotFound

        try:
            return self.api.inspect_image(image)
        except ImageNotFound:
            self._pull(image)
            return self.api.inspect_image(image)

    def _start(
        self, image_id: str, name: str, port: int, labels: dict[str, str], *, serving: bool, verify_port: int = 0
    ) -> str:
        """Start a container of the app on `port` (and, for proving it beside another server, `verify_port`)."""
        host_config = self.api.create_host_config(
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            # A candidate that crashes must stay down so the failure shows; the serving one comes back.
            restart_policy={"Name": "unless-stopped"} if serving else {"Name": "no"},
            mem_limit=self.mem_limit,
            pids_limit=256,
        )
        container = self.api.create_container(
            image_id,
            name=name,
            labels={
                **labels,
                keys.CONTAINER_ROLE: "app" if serving else "candidate",
                keys.CONTAINER_PORT: str(self.port),
                keys.CONTAINER_BIND: str(verify_port or port),
            },
            environment={
                **self.environment,
                "APP_BIND": f"127.0.0.1:{port}",
                # Optional for the app: if the port is taken when it restarts later, it serves without it.
                **({"APP_VERIFY_BIND": f"127.0.0.1:{verify_port}"} if verify_port else {}),
            },
            host_config=host_config,
        )
        self.api.start(container["Id"])
        return container["Id"]

    def _remove(self, container_id: str) -> None:
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            self.api.remove_container(container_id, force=True)

    def _logs(self, container_id: str) -> str:
        try:
            return self.api.logs(container_id, tail=15).decode(errors="replace").strip()
        except Exception as exc:  # a failure message must not be lost to a second failure
            return f"(no logs: {exc})"

    def _await_ready(self, container_id: str, port: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            state = self.api.inspect_container(container_id)["State"]
            if not state["Running"] or state.get("Restarting") or state.get("RestartCount", 0):
                raise NotReady(f"exited with code {state.get('ExitCode')}; logs:\n{self._logs(container_id)}")
            try:
                http_get(f"http://127.0.0.1:{port}/readyz", timeout=2.0)
                return
            except Exception as exc:  # 503 while loading, refused while starting: keep polling
                last = str(exc)
            time.sleep(0.3)
        raise NotReady(
            f"/readyz on 127.0.0.1:{port} not 200 within {self.ready_timeout:.0f}s (last: {last}); logs:\n"
            + self._logs(container_id)
        )

    def _prove(self, container_id: str, port: int, commit: str, model_version: str, what: str) -> None:
        self._await_ready(container_id, port)
        url = f"http://127.0.0.1:{port}/version"
        verify_version(lambda timeout: http_get(url, timeout), commit, model_version, what=what)

    def _wait_port_free(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while port_open(self.port):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _restore(self, previous: dict[str, Any], name: str) -> str:
        """Start the previous container again and prove it; a sentence for the failure message."""
        labels = previous["Labels"]
        serving = f"commit {labels.get(keys.CONTAINER_COMMIT)} / model {labels.get(keys.LABEL_MODEL_VERSION)}"
        try:
            if previous["Names"][0].lstrip("/") != name:
                self.api.rename(previous["Id"], name)
            self.api.start(previous["Id"])
            self._prove(
                previous["Id"],
                self.port,
                labels.get(keys.CONTAINER_COMMIT, ""),
                labels.get(keys.LABEL_MODEL_VERSION, ""),
                name,
            )
        except Exception as exc:
            return f"rollback FAILED: {name} ({serving}) did not come back: {exc}"
        return f"rolled back: {name} serving {serving} on 127.0.0.1:{self.port} again"

    # -- the release step ------------------------------------------------------------------------------

    def deploy(self, image: str, lineage: Mapping[str, Any]) -> DeploymentEvent:
        """Serve ``image`` on the fixed port, verified; otherwise keep (or restore) the previous container."""
        info = self._inspect_image(image)
        image_labels = info["Config"].get("Labels") or {}
        commit, model_version = self._expected(lineage, image_labels, image)
        digest = _digest(image, lineage, info)
        short = digest.split(":")[-1][:12]
        name = f"{NAME_PREFIX}{short}"
        labels = {
            keys.CONTAINER_COMMIT: commit,
            keys.LABEL_MODEL_VERSION: model_version,
            keys.LABEL_MODEL_SHA256: str(lineage.get("model_sha256") or image_labels.get(keys.LABEL_MODEL_SHA256, "")),
            keys.CONTAINER_IMAGE: image,
            keys.CONTAINER_IMAGE_DIGEST: digest,
            keys.CONTAINER_DEPLOYED_AT: datetime.now(UTC).replace(microsecond=0).isoformat(),
        }
        event = DeploymentEvent(
            target=self.name,
            image_digest=digest,
            image=image,
            commit=commit,
            model_version=model_version,
            revision="",
            model_sha256=labels[keys.LABEL_MODEL_SHA256],
        )

        for leftover in self._containers("candidate"):  # from a run that was killed mid-way
            self._remove(leftover["Id"])
        self.heal()
        previous = self._current()
        running = previous is not None and previous["State"] == "running"
        if running and previous["Labels"].get(keys.CONTAINER_IMAGE_DIGEST) == digest:
            with contextlib.suppress(NotReady, VerificationFailed):
                self._prove(previous["Id"], self.port, commit, model_version, "serving container")
                log.info("%s already serves %s, verified: nothing to do", previous["Names"][0], image)
                return event.replace(revision=previous["Id"][:12], changed=False)
        if not running and port_open(self.port):
            raise DeploymentFailed(
                f"127.0.0.1:{self.port} is taken by something that is not a modelship app container; "
                "not deploying over it"
            )
        serving_now = (
            f"{previous['Names'][0].lstrip('/')} (commit {previous['Labels'].get(keys.CONTAINER_COMMIT)} / model "
            f"{previous['Labels'].get(keys.LABEL_MODEL_VERSION)}) keeps serving on 127.0.0.1:{self.port}"
            if running
            else "nothing was serving before"
        )

        # 1. The candidate, on a spare port only: nothing reaches it until it is proven.
        from docker.errors import APIError

        spare = free_port()
        candidate = None
        try:
            candidate = self._start(info["Id"], f"{name}-candidate", spare, labels, serving=False)
            self._prove(candidate, spare, commit, model_version, f"candidate {name}-candidate")
        except (NotReady, VerificationFailed, APIError) as exc:
            raise DeploymentFailed(f"candidate for {image} failed: {exc}\n{serving_now}") from exc
        finally:
            if candidate:
                self._remove(candidate)

        # 2-3. Beside the old one on the serving port, then the old one stops; or the swap with a gap.
        if previous is not None and previous["Names"][0].lstrip("/") == name:
            self.api.rename(previous["Id"], f"{name}-previous")  # same digest over an unhealthy copy of itself
        final = self._join(info["Id"], name, labels, previous, commit, model_version) if running else None
        if final is None:
            final = self._swap(info["Id"], name, labels, previous, commit, model_version, image)
        for old in self._containers("app"):  # the old container, and older leftovers
            if old["Id"] != final:
                self._remove(old["Id"])
        log.info("%s serves %s on 127.0.0.1:%s (commit %s, model %s)", name, image, self.port, commit, model_version)
        return event.replace(revision=final[:12])

    def _join(
        self, image_id: str, name: str, labels: dict[str, str], previous: dict[str, Any], commit: str, model: str
    ) -> str | None:
        """Start the new serving container beside the old one, prove it, stop the old one gracefully; its id.

        None when the two cannot share the port (an image without SO_REUSEPORT): the caller swaps instead.
        """
        migrating = ensure_tcp_migrate_req()
        verify_port = free_port()
        final = self._start(image_id, name, self.port, labels, serving=True, verify_port=verify_port)
        try:
            self._prove(final, verify_port, commit, model, f"container {name} (beside the serving one)")
        except (NotReady, VerificationFailed) as exc:
            logs = self._logs(final).lower()
            self._stop_gracefully(final)
            self._remove(final)
            if any(sign in logs for sign in _CANNOT_SHARE):
                log.warning("%s cannot share 127.0.0.1:%s with %s (no SO_REUSEPORT in one of the images): "
                            "swapping with a gap instead", name, self.port, previous["Names"][0])  # fmt: skip
                return None
            prev = previous["Labels"]
            raise DeploymentFailed(
                f"{name} passed as a candidate but failed beside the serving container: {exc}\n"
                f"{previous['Names'][0].lstrip('/')} (commit {prev.get(keys.CONTAINER_COMMIT)} / model "
                f"{prev.get(keys.LABEL_MODEL_VERSION)}) keeps serving on 127.0.0.1:{self.port}, never stopped"
            ) from exc
        # The new one serves: the old one finishes what it has (SIGTERM) while new connections go to both, then
        # only to the new one. Its queued connections move to the new listeners when tcp_migrate_req is on.
        if not migrating:
            log.warning("net.ipv4.tcp_migrate_req is off and cannot be set here: requests queued on the old "
                        "server's listeners when it closes them are reset (set it to 1 on this host)")  # fmt: skip
        self._stop_gracefully(previous["Id"])
        return final

    def _swap(
        self,
        image_id: str,
        name: str,
        labels: dict[str, str],
        previous: dict[str, Any] | None,
        commit: str,
        model: str,
        image: str,
    ) -> str:
        """Stop the old container (kept for rollback), start the new one on the serving port, prove it; on
        failure the old one comes back. The gap is the app's start-up time."""
        previous_name = previous["Names"][0].lstrip("/") if previous else ""
        if previous is not None:
            self._stop_gracefully(previous["Id"])
        final = None
        try:
            if not self._wait_port_free():
                raise NotReady(f"127.0.0.1:{self.port} still in use after stopping {previous_name or 'nothing'}")
            final = self._start(image_id, name, self.port, labels, serving=True)
            self._prove(final, self.port, commit, model, f"container {name}")
        except Exception as exc:  # whatever broke, the old container must come back
            if final:
                self._remove(final)
            back = self._restore(previous, previous_name) if previous is not None else "nothing to roll back to"
            raise DeploymentFailed(
                f"{image} passed as a candidate but failed on the serving port: {exc}\n{back}"
            ) from exc
        return final

    def _stop_gracefully(self, container_id: str) -> None:
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            self.api.stop(container_id, timeout=self.stop_timeout)

    def heal(self) -> str | None:
        """A release cut off mid-swap (its worker killed) can leave the app containers stopped: start the newest
        one again and wait until it serves. Its name, or None when something serves (or nothing ever did)."""
        apps = self._containers("app")
        if not apps or any(c["State"] == "running" for c in apps):
            return None
        newest = max(apps, key=lambda c: c["Labels"].get(keys.CONTAINER_DEPLOYED_AT, ""))
        name = newest["Names"][0].lstrip("/")
        log.warning("nothing serves on 127.0.0.1:%s (a release was cut off mid-swap): starting %s again first",
                    self.port, name)  # fmt: skip
        self.api.start(newest["Id"])
        self._await_ready(newest["Id"], self.port)
        return name

    @staticmethod
    def _expected(lineage: Mapping[str, Any], image_labels: Mapping[str, str], image: str) -> tuple[str, str]:
        """Commit and model version to prove: the lineage's, checked against the image's own labels."""
        commit = str(lineage.get("commit") or image_labels.get(keys.LABEL_REVISION) or "")
        model_version = str(lineage.get("model_version") or image_labels.get(keys.LABEL_MODEL_VERSION) or "")
        if not commit or not model_version:
            raise ValueError(f"no commit/model version for {image}: not in the lineage nor the image labels")
        labelled_commit, labelled_model = (
            image_labels.get(keys.LABEL_REVISION),
            image_labels.get(keys.LABEL_MODEL_VERSION),
        )
        if labelled_commit and not same_commit(commit, labelled_commit):
            raise DeploymentFailed(f"{image} is labelled commit {labelled_commit}, the lineage says {commit}")
        if labelled_model and labelled_model != model_version:
            raise DeploymentFailed(f"{image} is labelled model {labelled_model}, the lineage says {model_version}")
        return commit, model_version


def _digest(image: str, lineage: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The registry digest when known (from the reference, the lineage or the engine), else the image id."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    if lineage.get("digest"):
        return str(lineage["digest"])
    for repo_digest in info.get("RepoDigests") or []:
        return repo_digest.split("@", 1)[1]
    return info["Id"]


def container_health(status: str) -> str | None:
    """The health check's verdict in a container's status ("Up 3 minutes (healthy)" → "healthy"; "starting"
    while it has not answered yet), or None for an image without a health check."""
    found = re.search(r"\((?:health: )?(healthy|unhealthy|starting)\)", status)
    return found.group(1) if found else None
