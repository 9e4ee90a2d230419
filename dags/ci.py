"""
### ci: every new commit, and every newly promoted model, becomes a tested image in the registry

1. **resolve**: pin the commit (the `commit` param, the commit the watcher announced, or the branch head)
   and the model version the alias names now; ask the registry whether it has exactly that image already.
2. **announce**: when it has, say so: the `image` event names the existing digest (`rebuilt: false`, nothing
   pushed), so a model rolled back to a version built before reaches the release in seconds. Otherwise:
3. **checkout**: a clean checkout of that commit into a per-run workspace.
4. **test**: the app's own tests, in a throwaway container with no credential, socket, host folder or network
   (its test environment image is cached by the requirements: a commit that changes none installs nothing).
5. **fetch_model**: the pinned model version, hashes verified (cached by manifest sha256).
6. **build**: code + model in one image, OCI labels naming the commit and model (no registry login, no network).
7. **smoke_test**: run it as production does; /readyz, /version and /score on a known digit.
8. **push**: to the registry (the only step logged in: the `modelship_registry` connection); emits the `image`
   event: repository, tag, digest, commit, model version and sha256, layers and bytes pushed.

Started by the `commits` watcher (new commit on the configured branch), by the `model` Asset (model_refresh
promoted a model) or by hand. Nothing is pushed unless every step before it passed; a verdict (red tests, a
failed smoke test, a tampered model) fails its task at once, an outage is retried.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from modelship import ci as steps
from modelship.lineage import IMAGE, MODEL, Build, ImageEvent, commits_asset
from modelship.settings import Settings
from modelship.tasks import DAG_DEFAULT_ARGS, emit, step

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="ci",
    schedule=(MODEL | commits_asset(_settings.source_repo, _settings.source_branch)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["modelship", "ci"],
    default_args=DAG_DEFAULT_ARGS,
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
    @step
    def resolve(params=None, triggering_asset_events=None, run_id=None) -> Build:
        return steps.resolve(params["commit"], triggering_asset_events, run_id)

    @task(outlets=[IMAGE])
    @step
    def announce(build: Build, outlet_events=None) -> ImageEvent:
        return emit(outlet_events, IMAGE, steps.announce(build))

    @task
    @step
    def checkout(build: Build) -> Build:
        return steps.checkout(build)

    @task
    @step
    def test(build: Build) -> Build:
        return steps.test(build)

    @task
    @step
    def fetch_model(build: Build) -> Build:
        return steps.fetch_model(build)

    @task
    @step
    def build(build: Build) -> Build:
        return steps.build_image(build)

    @task
    @step
    def smoke_test(build: Build) -> Build:
        return steps.smoke_test(build)

    @task(outlets=[IMAGE])
    @step
    def push(build: Build, outlet_events=None) -> ImageEvent:
        return emit(outlet_events, IMAGE, steps.push(build))

    @task
    @step
    def cleanup(build: Build | None) -> None:
        steps.cleanup(build)

    resolved = resolve()
    announce(resolved)
    checked_out = checkout(resolved)
    pushed = push(smoke_test(build(fetch_model(test(checked_out)))))
    # A teardown: runs after the steps whatever their outcome, and does not decide the run's state.
    pushed >> cleanup(resolved).as_teardown(setups=checked_out)


ci()
