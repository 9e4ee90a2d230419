"""How a step's outcome reaches Airflow: a verdict fails the task at once, nothing-to-do skips it.

Network steps retry on their own (modelship.retry) and Airflow's task retries (default_args) may outlast an
outage. A *verdict* is different: failing tests, a model below its gate, tampered bytes, an image that fails
its smoke test, a deployment that was rolled back. It will fail the same way every time, so retrying only
delays the red run and repeats the noise. *Nothing to do* (no model promoted yet, no image built yet) is not
a failure at all.

Steps raise subclasses of Verdict or NothingToDo; modelship.tasks.step, under each DAG task, maps them to
AirflowFailException (no retry) and AirflowSkipException. This module imports nothing, so any module may
declare its verdicts.
"""

from __future__ import annotations


class Verdict(Exception):
    """A failure that retrying cannot change; the message says what failed and by how much."""


class NothingToDo(Exception):
    """The run has nothing to do (and that is fine); the message says why. The task ends skipped."""
