"""The libraries every task process needs, imported once by the process Airflow forks task workers from.

Airflow runs each task in a fresh process forked from an executor worker; whatever that worker has imported,
the task has for free, everything else each task imports again. Left alone, every ci task imported the Azure
SDK (0.6 s, through WasbHook), the docker SDK, numpy/PIL, the OpenLineage client and Airflow's plugins anew.
The compose stack's Celery workers import it before they fork their pool (modelship.celery_config).
bench/bench_orchestration.py's "preload" variant names it in ``[scheduler] mp_forkserver_preload`` (with
``mp_start_method = forkserver``) for the LocalExecutor, where it measured slower than Airflow's default fork,
so `make up` does not use it.

Libraries and Airflow only, never modelship's own modules: those stay imported by the DAG file in each task,
so a code change in plugins/modelship reaches the next task without restarting Airflow (a preloaded module
would be the version the scheduler started with, until it restarts). Upgrading a library, or changing a
plugin's module directly under plugins/, needs a restart of the scheduler, as it always did.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# Each is optional: a deployment without the module (no OpenLineage provider, no Azure) still starts.
MODULES = (
    "airflow.executors.local_executor",  # what each LocalExecutor worker runs
    "airflow.sdk.execution_time.task_runner",  # the task process's main
    "airflow.providers.standard.decorators.python",  # @task
    "airflow.providers.microsoft.azure.hooks.wasb",  # the model store on Blob Storage (the Azure SDK)
    "airflow.providers.docker.hooks.docker",  # build, smoke test, push, the docker target
    "docker",
    "requests",
    "numpy",
    "PIL.Image",  # the smoke test's sample digit
    "airflow.providers.openlineage.extractors.base",  # modelship.openlineage's base, when lineage is on
    "openlineage.client.event_v2",
)


def preload() -> list[str]:
    """Import MODULES and load Airflow's plugins and listeners (as a task process would); what was missing."""
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    # Plugins and listeners (OpenLineage's among them): every task loads them when it starts, unless its
    # parent already has. The scheduler loads them for itself; the forkserver must do it here.
    try:
        from airflow.listeners.listener import get_listener_manager

        get_listener_manager()
    except Exception as exc:  # a broken plugin: each task then loads the plugins itself and says why
        log.warning("preload: Airflow's plugins not loaded (%s); every task loads them itself", exc)
    if missing:
        log.info("preload: not installed, left out: %s", ", ".join(missing))
    return missing


preload()
