"""
### maintenance: weekly, prune what only grows, never what serves or could serve again

1. **protect**: what must stay, and why (modelship.retention.policy): what serves on every target (asked of the
   target; one that cannot be asked keeps everything its history names), what an alias names, what is
   quarantined, each target's rollback target and each alias's previous version, and the desired state.
2. **registry**: the app repository's images beyond the newest `MODELSHIP_KEEP_IMAGES` that nothing protects
   are deleted by digest; then the registry's garbage collection reclaims their blobs where this deployment
   owns the registry (`MODELSHIP_REGISTRY_GC_COMMAND`; ACR does it by itself).
3. **model_store**: versions beyond the newest `MODELSHIP_KEEP_MODEL_VERSIONS` per model that nothing protects
   (model.json first: no reader ever sees half a version).
4. **engine**: the app images built on the Docker engine beyond the newest (never one a container uses or one
   younger than `MODELSHIP_GC_GRACE_HOURS`), dangling app images, the dangling build cache.
5. **caches** (after model_store, whatever its outcome): test environments and wheelhouses unused for
   `MODELSHIP_CACHE_MAX_IDLE_DAYS`, model cache entries of versions the store no longer keeps.

Every deletion is logged with why nothing kept it; the `dry_run` param lists without deleting. A failure on
one item does not stop the others; a step with failures ends red, listing them. `modelship gc` does the same
from a terminal. Weekly (`MODELSHIP_MAINTENANCE_SCHEDULE`, default Sunday 03:00 UTC) and on demand.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from modelship import retention
from modelship.lineage import DEPLOYMENTS, IMAGE, QUARANTINE
from modelship.settings import Settings
from modelship.tasks import DAG_DEFAULT_ARGS, events, step

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="maintenance",
    schedule=_settings.maintenance_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["modelship", "maintenance"],
    default_args=DAG_DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="List what would be deleted, and why; delete nothing."
        ),  # fmt: skip
    },
)
def maintenance():
    @task(inlets=[IMAGE, QUARANTINE, DEPLOYMENTS])
    @step
    def protect(inlet_events=None) -> dict:
        return retention.protect(events(inlet_events[IMAGE]), events(inlet_events[QUARANTINE]),
                                 events(inlet_events[DEPLOYMENTS]))  # fmt: skip

    @task
    @step
    def registry(protected: dict, params=None) -> dict:
        return retention.prune_registry(protected, params["dry_run"])

    @task
    @step
    def model_store(protected: dict, params=None) -> dict:
        return retention.prune_model_store(protected, params["dry_run"])

    @task
    @step
    def engine(protected: dict, params=None) -> dict:
        return retention.prune_engine(protected, params["dry_run"])

    @task(trigger_rule="all_done")
    @step
    def caches(store_report: dict | None, params=None) -> None:
        retention.prune_caches(store_report, params["dry_run"])

    protected = protect()
    registry(protected)
    engine(protected)
    caches(model_store(protected))


maintenance()
