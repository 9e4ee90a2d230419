"""
### release: nightly, the desired state goes into service, verified, or is rolled back and quarantined

1. **select_image**: the desired state (modelship.desired): the newest commit of the configured branch that
   passed ci × the model version the alias names now, chosen by lineage, never by which ci run finished
   last; or the image the `image` param names. Proven to exist in the registry by digest, its lineage read
   from its own labels. Nothing built yet for that pair: skipped (ci is building it). A quarantined image:
   skipped, naming when and why, unless `force`; what serves keeps serving.
2. **approve** (only where MODELSHIP_APPROVAL_TARGETS switches the gate on, e.g. `kubernetes`): Airflow's
   human-in-the-loop approval: the run waits until a person approves in the UI (Required Actions), seeing
   what serves now → what would serve (commit, model version and accuracy, image digest). Rejected or
   unanswered (MODELSHIP_APPROVAL_TIMEOUT): skipped, naming who and why; nothing is deployed. A target
   without the gate passes at once.
3. **deploy**: on the target (`docker` on one host, the embedded default; `kubernetes` for AKS or any
   cluster): apply, wait for the rollout, verify `/version` names the expected commit and model; on any
   failure roll back to what served before and fail. Emits the `deployment` event when it serves.
4. **record** (always, after deploy): the attempt, whatever its outcome, as a `deployments` event: target,
   image, commit, model, outcome, start and end, this run, who approved it. `modelship history` reads them.
5. **quarantine** (after a failed deploy): a `quarantine` event for the image, with the reason, so no
   scheduled release deploys it again (`modelship image release-quarantine DIGEST` lifts it).

Runs nightly (MODELSHIP_RELEASE_SCHEDULE) and on demand from the trigger form.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from modelship import approval as gate
from modelship import release as steps
from modelship.lineage import (
    DEPLOYMENT,
    DEPLOYMENTS,
    IMAGE,
    QUARANTINE,
    Approval,
    DeploymentEvent,
    DeploymentRecord,
    Quarantine,
    ReleaseImage,
)
from modelship.settings import Settings
from modelship.tasks import DAG_DEFAULT_ARGS, emit, events, step

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="release",
    schedule=_settings.release_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one deployment at a time per target
    tags=["modelship", "release"],
    default_args=DAG_DEFAULT_ARGS,
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
            description="REGISTRY/REPOSITORY@sha256:DIGEST (or :TAG). Empty: the desired state (newest commit "
            "that passed ci × the model the alias names now).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Deploy the image even if a failed release quarantined it (on purpose, e.g. after a fix "
            "outside the image).",
        ),
    },
)
def release():
    @task(inlets=[IMAGE, QUARANTINE])
    @step
    def select_image(params=None, inlet_events=None) -> ReleaseImage:
        return steps.select_image(params["image"], params["force"], events(inlet_events[IMAGE]),
                                  events(inlet_events[QUARANTINE]))  # fmt: skip

    @task(outlets=[DEPLOYMENT])
    @step
    def deploy(image: ReleaseImage, approval: Approval | None = None, params=None, ti=None,
               outlet_events=None) -> DeploymentEvent:  # fmt: skip
        def record(attempt: DeploymentRecord) -> None:
            ti.xcom_push(key="record", value=attempt.as_dict())

        deployed = steps.deploy(params["target"], image, record, dag_id=ti.dag_id, run_id=ti.run_id,
                                approved_by=gate.approver(approval))  # fmt: skip
        return emit(outlet_events, DEPLOYMENT, deployed)

    @task(outlets=[DEPLOYMENTS])
    @step
    def record(ti=None, outlet_events=None) -> DeploymentRecord:
        return emit(outlet_events, DEPLOYMENTS, steps.recorded(ti.xcom_pull(task_ids="deploy", key="record")))

    @task(outlets=[QUARANTINE])
    @step
    def quarantine(ti=None, outlet_events=None) -> Quarantine:
        return emit(outlet_events, QUARANTINE, steps.quarantine_of(ti.xcom_pull(task_ids="deploy", key="record")))

    selected = select_image()
    if _settings.approval_targets:  # the gate exists only where it is switched on; without it, no extra task
        approved = gate.ReleaseApproval(task_id="approve", image_task="select_image")
        selected >> approved
        deployed = deploy(selected, approved.output)
    else:
        deployed = deploy(selected)
    # Teardowns: they run once deploy is done, whatever its outcome, and do not decide the run's state.
    deployed >> [record().as_teardown(setups=selected), quarantine().as_teardown(setups=selected)]


release()
