"""Fixtures for the image and registry tests: Airflow connections to the harness registry, tiny images.

Loaded by test_images.py and test_registry.py with `pytest_plugins = ["images_fixtures"]` (tests/plugins/
conftest.py belongs to another part of the suite). Connections are given to Airflow the way a deployment
can: AIRFLOW_CONN_<ID> JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import devstack
from devstack import components, rootfs
from modelship import images

BASE_IMAGE = rootfs.BASE_IMAGE

# A Dockerfile that honours the lineage contract of app/Dockerfile in miniature: build args → OCI labels.
TINY_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN echo tiny > /tiny.txt
ARG GIT_COMMIT BUILD_DATE SOURCE_URL APP_VERSION MODEL_NAME MODEL_VERSION MODEL_SHA256
LABEL org.opencontainers.image.revision=$GIT_COMMIT \\
      org.opencontainers.image.created=$BUILD_DATE \\
      org.opencontainers.image.source=$SOURCE_URL \\
      org.opencontainers.image.version=$APP_VERSION \\
      io.modelship.model.name=$MODEL_NAME \\
      io.modelship.model.version=$MODEL_VERSION \\
      io.modelship.model.sha256=$MODEL_SHA256
"""

TINY_LINEAGE = images.Lineage(
    commit="0123456789abcdef0123456789abcdef01234567",
    model_name="digits",
    model_version="7",
    model_sha256="ab" * 32,
    source="https://example.invalid/modelship.git",
    created="2026-11-25T00:00:00Z",
)


@contextlib.contextmanager
def _connection(conn_id: str, **fields: object) -> Iterator[str]:
    """Make `conn_id` resolvable by BaseHook.get_connection for the duration of the block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "docker", **fields}))
        yield conn_id


@pytest.fixture
def airflow_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """airflow_conn(conn_id, host=…, login=…) defines a docker-type connection for one test."""

    def define(conn_id: str, **fields: object) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "docker", **fields}))
        return conn_id

    return define


@pytest.fixture(scope="session")
def tiny_lineage() -> images.Lineage:
    return TINY_LINEAGE


@pytest.fixture(scope="session")
def reg_conn(registry: components.Registry) -> Iterator[str]:
    """A docker-type connection holding the harness registry's real credentials."""
    host, port = registry.address.split(":")
    with _connection(
        "modelship_test_registry",
        host=host,
        port=int(port),
        login=registry.username,
        password=registry.password,
    ) as conn_id:
        yield conn_id


@pytest.fixture(scope="session")
def reg_conn_bad(registry: components.Registry) -> Iterator[str]:
    """The harness registry's address and user, with a wrong password."""
    with _connection(
        "modelship_test_registry_bad",
        host=registry.address,
        login=registry.username,
        password="not-the-password",
    ) as conn_id:
        yield conn_id


@pytest.fixture(scope="session")
def reg_conn_anon(registry: components.Registry) -> Iterator[str]:
    """The harness registry's address and no credentials at all."""
    with _connection("modelship_test_registry_anon", host=registry.address) as conn_id:
        yield conn_id


def _write_context(dest: Path, dockerfile: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(dockerfile)
    return dest


@pytest.fixture
def tiny_context(tmp_path: Path) -> Callable[[str], Path]:
    """tiny_context(dockerfile) → a build context folder holding just that Dockerfile."""
    return lambda dockerfile=TINY_DOCKERFILE: _write_context(tmp_path / "context", dockerfile)


@pytest.fixture(scope="session")
def tiny_image(docker_client, tmp_path_factory: pytest.TempPathFactory) -> images.ImageRef:
    """A few-KB image FROM the local base whose labels carry TINY_LINEAGE."""
    context = _write_context(tmp_path_factory.mktemp("tiny-context"), TINY_DOCKERFILE)
    return images.build_image(docker_client, context, "modelship-test/tiny:latest", TINY_LINEAGE.build_args(BASE_IMAGE))


@pytest.fixture
def smoke_leftovers(docker_client) -> Callable[[], list]:
    """smoke_leftovers() → every container smoke_test started on this engine and did not remove."""
    return lambda: docker_client.containers.list(all=True, filters={"label": images.SMOKE_LABEL})


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """Where tests keep the wheelhouse between sessions (the per-machine cache devstack uses too)."""
    return Path(os.environ.get("MODELSHIP_TEST_CACHE", devstack.CACHE_DIR))
