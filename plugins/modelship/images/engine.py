"""The Docker engine the steps talk to: the provider's DockerHook, a docker.APIClient or a docker.DockerClient,
interchangeably ("DockerLike"), and what an engine outage means.

Two kinds of client, on purpose. `engine_client()` holds no registry credential at all: it builds, smoke-tests
and runs the app's tests, the steps where code of the commit runs. `docker_hook()` is logged into the registry
connection: only the push (and pulling a base image the engine does not have yet) uses it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import docker
import requests

from modelship.retry import Transient

if TYPE_CHECKING:
    from airflow.providers.docker.hooks.docker import DockerHook

    DockerLike = DockerHook | docker.APIClient | docker.DockerClient


class EngineUnavailable(Transient, RuntimeError):
    """The Docker engine stopped answering mid-step: an outage worth a retry, not a verdict on the image."""


def docker_hook(registry_conn_id: str | None = None, base_url: str | None = None) -> DockerHook:
    """The Docker provider's hook for our engine, logged into the registry of `registry_conn_id`.

    Defaults come from settings. The hook logs in lazily, the first time its api_client is used.
    """
    from airflow.providers.docker.hooks.docker import DockerHook

    from modelship.settings import Settings

    settings = Settings.get()
    return DockerHook(
        docker_conn_id=registry_conn_id or settings.registry_conn_id,
        base_url=base_url or settings.docker_host,
        timeout=300,  # the classic builder sends nothing while a quiet RUN step works
    )


def engine_client(base_url: str | None = None) -> DockerHook:
    """The Docker provider's hook for our engine with no registry credential: it never logs in, and its client
    forgets whatever the worker's ~/.docker/config.json holds (docker-py would otherwise send every stored login
    with each build, for the engine to pull any FROM image the commit's Dockerfile names)."""
    from airflow.providers.docker.hooks.docker import DockerHook

    from modelship.settings import Settings

    hook = DockerHook(docker_conn_id=None, base_url=base_url or Settings.get().docker_host, timeout=300)
    # docker-py's build() sends every login it can find (X-Registry-Config), reloading the config file when it
    # holds none: this client sends none, so FROM pulls anonymously (a base image from a private registry is
    # pulled beforehand by images.ensure_base_image, with the registry connection).
    hook.api_client._set_auth_headers = lambda headers: None
    return hook


def api_of(docker_like: DockerLike) -> docker.APIClient:
    if isinstance(docker_like, docker.APIClient):
        return docker_like
    if isinstance(docker_like, docker.DockerClient):
        return docker_like.api
    return docker_like.api_client  # DockerHook: logs into its connection's registry on first use


def engine_name(api: docker.APIClient) -> str:
    """The engine's address as configured: unix://<socket> (docker-py calls every socket http+docker://localhost)."""
    socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
    return f"unix://{socket_path}" if socket_path else api.base_url


def engine_still_there(api: docker.APIClient, during: str, *, grace: float = 0.0) -> None:
    """Raise EngineUnavailable if the engine does not answer: a step it killed while stopping is not a
    failed step (that would be a verdict, failing the run without a retry).

    grace: keep asking that many seconds (a step was killed by a signal: an engine that is stopping kills its
    containers first and still answers for a few seconds before it goes); answering throughout, it stays.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            api.ping()
        except (requests.RequestException, docker.errors.DockerException) as exc:
            raise EngineUnavailable(
                f"Docker engine {engine_name(api)} stopped answering during {during}: {exc}"
            ) from exc
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)
