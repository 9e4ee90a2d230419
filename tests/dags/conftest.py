"""Fixtures for the DAG tests that run DAGs in-process with `dag.test()`.

The migrated Airflow metadata DB those runs need is the session fixture `airflow_db` in tests/conftest.py
(`airflow db migrate` once, in the fresh per-session AIRFLOW_HOME that tests/conftest.py sets up).

`trained`: model packages for the DAG tests, trained once per session (training is the slow part).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """"good" (version v1, passes the 0.95 gate) and "bad" (version bad1, degrade 0.9: far below it)."""
    from training.train import train_package

    root = tmp_path_factory.mktemp("dag-packages")
    train_package(root / "good", "v1")
    train_package(root / "bad", "bad1", degrade=0.9)
    return {"good": root / "good", "bad": root / "bad"}
