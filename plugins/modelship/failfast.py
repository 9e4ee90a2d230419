"""Which failures are worth a retry, and which must end the run at once.

Network steps retry with exponential backoff (the DAGs' default_args). A verdict is not a network
fault: failing tests, a model below its gate, a tampered file or an image that fails its smoke test
will fail the same way every time, so retrying only delays the red run and repeats the noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException


@contextlib.contextmanager
def no_retry_on(*verdicts: type[BaseException]) -> Iterator[None]:
    """Turn the given exception types into AirflowFailException (fail now, no retry), message kept."""
    try:
        yield
    except verdicts as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
