"""Fixtures for the model store and CLI tests: trained packages, and a fresh store on each backend.

Training is the slow part, so the packages are trained once per session (into tmp_path_factory folders)
and only ever read by the tests; a test that wants to damage a package copies it first. Each test gets an
empty store of its own: a fresh folder for the local backend, a fresh container in the session's real
Azurite for the wasb backend, reached the way Airflow reaches it (an AIRFLOW_CONN_<ID> connection).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import components
from modelship.model_store import BlobModelStore, LocalModelStore, ModelStore
from modelship.retry import Policy

BLOB_CONN_ID = "modelship_test_blob"
DEFAULT_RETRY = Policy()


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model packages of "digits": v1 and v2 (good), v10 (good, for version ordering) and bad (degraded)."""
    from training.train import train_package

    root = tmp_path_factory.mktemp("packages")
    specs = {"v1": ("v1", 0.0, 0), "v2": ("v2", 0.0, 1), "v10": ("v10", 0.0, 2), "bad": ("bad1", 0.9, 0)}
    for key, (version, degrade, seed) in specs.items():
        train_package(root / key, version, degrade=degrade, seed=seed)
    return {key: root / key for key in specs}


def blob_connection(azurite: components.Azurite) -> str:
    """AIRFLOW_CONN_<ID> value for the harness Azurite (conn type wasb, connection string in extra)."""
    return json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}})


def new_container() -> str:
    return f"models-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def blob_env(azurite: components.Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the Airflow connection BLOB_CONN_ID at the harness Azurite; return the conn id."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{BLOB_CONN_ID.upper()}", blob_connection(azurite))
    return BLOB_CONN_ID


StoreFactory = Callable[..., ModelStore]


@pytest.fixture(params=["local", "azurite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """make_store(cache=...) -> a new store object on the same (per-test, empty) storage.

    Several objects on one storage stand for several processes (two promoters, a second CI worker).
    """
    if request.param == "local":
        root = tmp_path / "store"

        def make(cache: Path | None = None, retry_policy: Policy = DEFAULT_RETRY) -> ModelStore:
            return LocalModelStore(root, cache_dir=cache, retry_policy=retry_policy)

        return make

    conn_id = request.getfixturevalue("blob_env")
    container = new_container()

    def make_blob(cache: Path | None = None, retry_policy: Policy = DEFAULT_RETRY) -> ModelStore:
        return BlobModelStore(container, conn_id, cache_dir=cache, retry_policy=retry_policy)

    return make_blob


@pytest.fixture
def store(make_store: StoreFactory, tmp_path: Path) -> ModelStore:
    return make_store(cache=tmp_path / "cache")
