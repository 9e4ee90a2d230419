"""Helpers for the end-to-end tests: run a DAG with dag.test(), read back task states and Asset events."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_dag(dag_id: str, conf: dict[str, Any] | None = None):
    """dag.test() of a DAG from dags/: the real task code, in-process, against the session's DB."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id).test(run_conf=conf or {})


def task_states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def asset_events(name: str) -> list[dict[str, Any]]:
    """Extras of the events of Asset `name`, oldest first, read back from Airflow's DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name).order_by(AssetEvent.id)
        )  # fmt: skip
        return [dict(row.extra) for row in rows]


def clone_with_commit(tmp: Path, path: str, edit) -> str:
    """A throwaway clone of this repository with one more commit that edits `path`; returns its sha."""
    git("clone", "-q", str(REPO), str(tmp))
    target = tmp / path
    target.write_text(edit(target.read_text()))
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam", f"break {path}", cwd=tmp)
    return git("rev-parse", "HEAD", cwd=tmp)
