"""What sits between an Airflow task and a modelship step, so every DAG task body is one line.

    @task
    @step
    def checkout(build: Build) -> Build:
        return steps.checkout(build)

`step` maps a step's outcome to Airflow's: a Verdict (modelship.verdicts) fails the task without retry, a
NothingToDo skips it, anything else is left to the task's retries. It also gives the task its artifacts
(modelship.lineage) typed, though they travel between tasks as JSON in XCom, and turns the artifact it returns
back into JSON. `emit` sets an artifact as the extra of the task's Asset event and returns it.
`DAG_DEFAULT_ARGS` is every DAG's default_args: the retries, and the failure notice (modelship.notify).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from modelship.lineage import Artifact, from_xcom, to_xcom
from modelship.notify import FailureNotice
from modelship.settings import DEFAULT_ARGS
from modelship.verdicts import NothingToDo, Verdict

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound=Artifact)

# Every DAG's default_args: the retry policy (modelship.settings) and a failure notice by e-mail and chat for
# a task that fails for good (modelship.notify; nothing is sent where no channel is configured).
DAG_DEFAULT_ARGS = {**DEFAULT_ARGS, "on_failure_callback": [FailureNotice()]}


def step(fn: F) -> F:
    """Decorate a task body (under @task): verdicts fail without retry, NothingToDo skips, artifacts are typed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        args = tuple(from_xcom(a) for a in args)
        kwargs = {k: from_xcom(v) for k, v in kwargs.items()}
        try:
            return to_xcom(fn(*args, **kwargs))
        except NothingToDo as exc:
            raise AirflowSkipException(str(exc)) from exc
        except Verdict as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def emit(outlet_events: Any, asset: Any, artifact: A) -> A:
    """`artifact` as the extra of the task's event of `asset` (recorded when the task succeeds)."""
    outlet_events[asset].extra = artifact.as_dict()
    return artifact


def events(accessor: Any) -> list[Any]:
    """The artifacts in a sequence of Asset events (inlet or triggering), oldest first; others are left out."""
    found = [from_xcom(dict(getattr(event, "extra", None) or {})) for event in accessor or ()]
    return [item for item in found if isinstance(item, Artifact)]
