"""Fixtures for the hardening tests: a trained model package and the app on it.

The harness components (Azurite, registry, Docker engine, airflow_db) come from tests/conftest.py; the
real Airflow deployment (scheduler, dag-processor, api-server) that the access and concurrency tests
need is `airflow_stack` in airflow_stack.py, loaded by the modules that use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hardening_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained model package (never modified by a test)."""
    from training.train import train_package

    path = tmp_path_factory.mktemp("hardening-model") / "digits-v1"
    train_package(path, version="v1")
    return path
