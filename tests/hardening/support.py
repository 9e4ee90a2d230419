"""Helpers shared by the hardening tests (fixtures are in conftest.py)."""

from __future__ import annotations


def try_numbers(dag_run) -> dict[str, int]:
    """task id → how many times it was tried in this run (1: no retry)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in dag_run.get_task_instances(session=session)}
