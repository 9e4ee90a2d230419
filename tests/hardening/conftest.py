"""Fixtures for the hardening tests: a trained model package, DAG settings on a local model store, the
harness registry as the `modelship_registry` connection.

The harness components (Azurite, registry, Docker engine, airflow_db) come from tests/conftest.py; the
real Airflow deployment the access, log-masking and concurrency tests need is support.AirflowStack,
started by test_airflow_stack.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import components
from tests.e2e.pipeline import REPO
from tests.faultproxy import FaultProxy


@pytest.fixture(scope="session")
def hardening_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained model package (never modified by a test)."""
    from training.train import train_package

    path = tmp_path_factory.mktemp("hardening-model") / "digits-v1"
    train_package(path, version="v1")
    return path


@pytest.fixture
def dag_env(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hardening_model: Path) -> Path:
    """Settings for the DAGs: a local model store with v1 promoted, this repository as the source."""
    from modelship.model_store import LocalModelStore

    store = tmp_path / "models"
    LocalModelStore(store).publish(hardening_model)
    LocalModelStore(store).promote("digits", "v1")
    monkeypatch.setenv("MODELSHIP_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSHIP_MODEL_STORE", f"local:{store}")
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(REPO))
    return store


@pytest.fixture
def registry_conn(registry: components.Registry, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in components.airflow_connections({"modelship_registry": registry.connection}).items():
        monkeypatch.setenv(key, value)
    return registry.address


@pytest.fixture
def registry_proxy(registry: components.Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy in front of the harness registry, and the modelship_registry connection through it."""
    with FaultProxy(registry.port, name="registry-proxy") as proxy:
        connection = {**registry.connection, "host": proxy.address}
        for key, value in components.airflow_connections({"modelship_registry": connection}).items():
            monkeypatch.setenv(key, value)
        yield proxy
