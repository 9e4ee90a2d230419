"""Fixtures for running DAGs in-process with `dag.test()`.

`airflow_db`: dag.test() records runs, task instances, XComs and Asset events in Airflow's metadata
database, which must exist and be migrated first. tests/conftest.py points AIRFLOW_HOME at a fresh
temporary folder per session (SQLite there); this fixture runs `airflow db migrate` against it once
(~5 s), as a subprocess of the venv's `airflow` with the same environment, so the test process's own
Airflow configuration is exactly the one that was migrated.

`trained`: model packages for the DAG tests, trained once per session (training is the slow part).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB in the session's AIRFLOW_HOME; returns that home."""
    home = Path(os.environ["AIRFLOW_HOME"])
    result = subprocess.run(
        [str(AIRFLOW), "db", "migrate"], env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed in {home}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return home


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """"good" (version v1, passes the 0.95 gate) and "bad" (version bad1, degrade 0.9: far below it)."""
    from training.train import train_package

    root = tmp_path_factory.mktemp("dag-packages")
    train_package(root / "good", "v1")
    train_package(root / "bad", "bad1", degrade=0.9)
    return {"good": root / "good", "bad": root / "bad"}
