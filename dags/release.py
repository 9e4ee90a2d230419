"""
### release: nightly, the newest image that passed CI goes into service, verified, or is rolled back

1. **select_image**: the newest `image` Asset event (or the `image` param), checked to exist in the
   registry by digest; its lineage (commit, model version) is read from the image's own labels.
2. **deploy**: on the target (`docker` on one host, the embedded default; `kubernetes` for AKS or
   any cluster): render/apply, wait for the rollout, verify `/version` answers with the expected commit
   and model, and on any failure roll back to what served before and fail loudly. Emits the
   `deployment` Asset event: target, image digest, commit, model version, revision.

Runs nightly (MODELSHIP_RELEASE_SCHEDULE) and on demand from the trigger form.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from modelship import release as steps
from modelship.deploy import DeploymentFailed
from modelship.failfast import no_retry_on
from modelship.lineage import DEPLOYMENT, IMAGE
from modelship.settings import DEFAULT_ARGS, Settings

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="release",
    schedule=_settings.release_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one deployment at a time per target
    tags=["modelship", "release"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "target": Param(
            _settings.deploy_target,
            type="string",
            enum=["docker", "kubernetes"],
            title="Target",
            description="Where to deploy: docker (this host) or kubernetes (the modelship_kubernetes connection).",
        ),
        "image": Param(
            "",
            type="string",
            title="Image",
            description="REGISTRY/REPOSITORY@sha256:DIGEST (or :TAG). Empty: the newest image that passed CI.",
        ),
    },
)
def release():
    @task(inlets=[IMAGE])
    def select_image(params=None, inlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        events = [event.extra for event in inlet_events[IMAGE]]
        try:
            with no_retry_on(steps.ReleaseError):
                return steps.select_image(params["image"], events)
        except steps.NothingToRelease as exc:  # a fresh install's first night is not a failure
            raise AirflowSkipException(str(exc)) from exc

    @task(outlets=[DEPLOYMENT])
    def deploy(image: dict, params=None, outlet_events=None) -> dict:
        # A failed deployment has already been rolled back; deploying it again would fail the same way.
        with no_retry_on(DeploymentFailed):
            extra = steps.deploy(params["target"], image)
        outlet_events[DEPLOYMENT].extra = extra
        return extra

    deploy(select_image())


release()
