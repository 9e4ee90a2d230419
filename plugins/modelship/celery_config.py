"""The Celery workers' configuration: Airflow's own, plus modelship.preload imported when a worker starts.

A Celery worker forks its pool processes at start-up, and each task runs in a process forked from one of them:
what the worker imported before forking, every task has for free; everything else each task imports again
(the Azure and docker SDKs, OpenLineage, Airflow's plugins: modelship.preload says which and why). Celery's own
`imports` setting makes the worker import modelship.preload before it starts its pool. The compose stack sets
``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=modelship.celery_config.CELERY_CONFIG`` (docker-compose.airflow.yml).
`make up`'s LocalExecutor keeps Airflow's default start method (devstack.stack.SCHEDULING says why).
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG, "imports": ("modelship.preload",)}
