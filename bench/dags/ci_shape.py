"""
### ci_shape: the ci DAG's shape with empty task bodies (bench/bench_orchestration.py)

Eight chained tasks, decorated and wired as dags/ci.py's, importing the same modules (so a task process
parses what a ci task parses), each passing a small artifact on through XCom and doing nothing else. What
a run of it takes under the scheduler is Airflow's own cost per task, measured without the steps' work.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task

from modelship import ci as _steps  # noqa: F401  (the imports of dags/ci.py: what every task process parses)
from modelship.tasks import step

STEPS = ("resolve", "checkout", "test", "fetch_model", "build", "smoke_test", "push", "cleanup")


@dag(
    dag_id="ci_shape",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["bench"],
    doc_md=__doc__,
)
def ci_shape():
    previous = None
    for name in STEPS:

        @task(task_id=name)
        @step
        def passthrough(build: Any = None) -> Any:
            return dict(build or {"commit": "0" * 40})

        previous = passthrough(previous) if previous is not None else passthrough()


ci_shape()
