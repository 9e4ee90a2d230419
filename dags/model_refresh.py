"""
### model_refresh: validate a published model version, then promote it

Step 2 of the modelship flow. A data scientist publishes a version to the model store
(`modelship model publish DIR`) and triggers this DAG with the version to promote.

1. **validate**: fetch the version (every file's sha256 is checked against `model.json`), score the ONNX
   file on the project's fixed held-out split, and apply the gates: accuracy of at least `min_accuracy`
   and, if `must_beat_promoted`, strictly better than the version the alias points at now.
   A failed gate, an unknown version or tampered bytes fail the run at once (retrying cannot help);
   only an unreachable store is retried.
2. **promote**: move the alias (default `production`) to the version by compare-and-swap against the
   state `validate` saw. If someone else moved it meanwhile the run fails loudly instead of undoing them.
   Emits the `model` Asset event with `{name, version, sha256, accuracy}`, which starts **ci**.

Store and credentials: `MODELSHIP_MODEL_STORE` (`wasb:<container>` through the Airflow connection
`modelship_blob`, or `local:/path`); see `modelship.settings`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, task

from modelship.lineage import MODEL, ModelEvent, ValidatedModel
from modelship.settings import Settings
from modelship.tasks import DAG_DEFAULT_ARGS, emit, step
from modelship.validation import run_promote, run_validate

_settings = Settings.get()  # environment only: no I/O at parse time


@dag(
    dag_id="model_refresh",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["modelship", "model"],
    doc_md=__doc__,
    default_args=DAG_DEFAULT_ARGS,
    params={
        "model_name": Param(
            _settings.model_name,
            type="string",
            minLength=1,
            title="Model name",
            description="Name of the model in the model store.",
        ),
        # No default: promoting "whatever is newest" by accident is exactly what this DAG must not do.
        # Airflow refuses a run without it (UI form, REST API and dag.test alike) with
        # "Invalid input for param version"; the validate task checks again for clarity.
        "version": Param(
            type="string",
            minLength=1,
            title="Version",
            description="The published version to validate and promote (required), e.g. 2026-11-25.1.",
        ),
        "min_accuracy": Param(
            0.95,
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum accuracy",
            description="Held-out accuracy the version must reach (0..1).",
        ),
        "must_beat_promoted": Param(
            False,
            type="boolean",
            title="Must beat the promoted version",
            description="Also require a strictly higher accuracy than the version the alias points at now.",
        ),
        "alias": Param(
            _settings.model_alias,
            type="string",
            minLength=1,
            title="Alias",
            description=f"Alias to move; ci builds images from {_settings.model_alias!r} (MODELSHIP_MODEL_ALIAS).",
        ),
    },
)
def model_refresh() -> None:
    @task
    @step
    def validate(params: dict[str, Any] | None = None) -> ValidatedModel:
        return run_validate(dict(params or {}))

    @task(outlets=[MODEL])
    @step
    def promote(validated: ValidatedModel, params: dict[str, Any] | None = None, outlet_events=None) -> ModelEvent:
        return emit(outlet_events, MODEL, run_promote(validated, alias=str((params or {})["alias"])))

    promote(validate())


model_refresh()
