"""
### ci: every new commit, and every newly promoted model, becomes a tested image in the registry

1. **resolve**: pin the commit (the `commit` param, the commit the watcher announced, or the branch head)
   and the promoted model version; if the registry already has exactly that image, say so and stop.
2. **checkout**: a clean checkout of that commit into a per-run workspace.
3. **test**: the app's own tests, in an isolated environment cached by its requirements.
4. **fetch_model**: the pinned model version, hashes verified (cached by manifest sha256).
5. **build**: code + model in one image, OCI labels naming the commit and model.
6. **smoke_test**: run it as production does; /readyz, /version and /score on a known digit.
7. **push**: to the registry (credentials from the `modelship_registry` connection); emits the
   `image` Asset event: repository, tag, digest, commit, model version and sha256.

Started by the `commits` watcher (new commit on the configured branch), by the `model` Asset
(model_refresh promoted a model) or by hand. Nothing is pushed unless every step before it passed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from modelship import ci as steps
from modelship.apptests import AppTestsFailed
from modelship.failfast import no_retry_on
from modelship.images import ImageBuildError, SmokeTestFailed
from modelship.lineage import IMAGE, MODEL, commits_asset
from modelship.model_store import IntegrityError, ModelNotFound
from modelship.settings import DEFAULT_ARGS, Settings
from modelship.source import SourceError

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="ci",
    schedule=(MODEL | commits_asset(_settings.source_repo, _settings.source_branch)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["modelship", "ci"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "commit": Param(
            "",
            type="string",
            # Refused at trigger time (form, REST API, dag.test) instead of failing a task later.
            pattern="^([0-9a-f]{7,40})?$",
            title="Commit",
            description="The commit to build (7-40 hex digits). Empty: the newest commit of the configured branch.",
        ),
    },
)
def ci():
    @task
    def resolve(params=None, triggering_asset_events=None, run_id=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        events = [event.extra for evs in (triggering_asset_events or {}).values() for event in evs]
        try:
            with no_retry_on(ModelNotFound, SourceError):
                candidate = steps.resolve(params["commit"], events, run_id)
        except steps.NothingToBuild as exc:
            raise AirflowSkipException(str(exc)) from exc
        if candidate["already_pushed"]:
            raise AirflowSkipException(
                f"{candidate['repository']}:{candidate['tag']} is already pushed ({candidate['already_pushed']})"
                " with this commit and model: nothing rebuilt, nothing re-pushed"
            )
        return candidate

    @task
    def checkout(candidate: dict) -> dict:
        with no_retry_on(SourceError):
            return steps.checkout(candidate)

    @task
    def test(candidate: dict) -> dict:
        with no_retry_on(AppTestsFailed):
            steps.test(candidate)
        return candidate

    @task
    def fetch_model(candidate: dict) -> dict:
        with no_retry_on(IntegrityError, ModelNotFound):
            return steps.fetch_model(candidate)

    @task
    def build(candidate: dict) -> dict:
        with no_retry_on(ImageBuildError):
            return steps.build(candidate)

    @task
    def smoke_test(candidate: dict) -> dict:
        with no_retry_on(SmokeTestFailed):
            steps.smoke_test(candidate)
        return candidate

    @task(outlets=[IMAGE])
    def push(candidate: dict, outlet_events=None) -> dict:
        extra = steps.push(candidate)
        outlet_events[IMAGE].extra = extra
        return extra

    @task
    def cleanup(candidate: dict | None) -> None:
        steps.cleanup(candidate)

    candidate = resolve()
    checked_out = checkout(candidate)
    pushed = push(smoke_test(build(fetch_model(test(checked_out)))))
    # A teardown: runs after the steps whatever their outcome, and does not decide the run's state.
    pushed >> cleanup(candidate).as_teardown(setups=checked_out)


ci()
