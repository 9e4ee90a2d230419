"""Which failures are worth a retry, and the one retry policy (tenacity) every network step uses.

A failure is *transient* when asking again can succeed: no answer at all (connection refused or reset,
a timeout, a name that does not resolve yet), throttling (429), a server-side error (5xx, 408), a stream
cut mid-transfer. Those are retried here with exponential backoff and a bounded budget, and what is still
failing after the budget becomes the step's error, which Airflow's own task retries may outlast.

A full disk is transient too (NoSpace): the space may be freed (`modelship gc` prunes old images, model
versions and caches), but not within seconds, so it is never retried in place: the step fails with a message
saying where and how much is free, and Airflow's task retries (minutes apart) try again.

Everything else is a *verdict* (modelship.verdicts): the tests are red, the model is below its gate, the
image is missing. Asking again cannot change a verdict, so it is never retried anywhere.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Transient(Exception):
    """Raise (or subclass) to mark a failure as worth a retry, e.g. "connection reset" inside a push stream."""


class NoSpace(Transient, RuntimeError):
    """No space left on a device a step writes to: transient (space can be freed), but not retried in place."""


def no_space(failure: BaseException | str) -> bool:
    """Whether a failure (an OSError, or an error a server reported as text) is "no space left on device"."""
    if isinstance(failure, NoSpace):
        return True
    if isinstance(failure, OSError) and failure.errno == errno.ENOSPC:
        return True
    return "no space left on device" in str(failure).lower()


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception of requests, urllib3, azure-core, docker-py or the Kubernetes client carries."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None) or getattr(response, "status", None)
    return value if isinstance(value, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry can fix (see the module docstring), for every client modelship uses."""
    if isinstance(exc, Transient | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True  # but see NoSpace: a step reports it as such, and nothing retries it in place
    module = type(exc).__module__.split(".")[0]
    status = http_status(exc)
    if module == "requests":
        import requests

        if isinstance(exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError):
            return True
    elif module == "urllib3":
        from urllib3 import exceptions as u3

        if isinstance(exc, u3.ProtocolError | u3.TimeoutError | u3.MaxRetryError | u3.NewConnectionError):
            return True
    elif module == "azure":
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return True
        if isinstance(exc, HttpResponseError) and status is None:
            return True  # the connection broke mid-response: no status was ever read
    elif module == "kubernetes":
        if status == 0:  # the client's "no HTTP answer at all"
            return True
    elif module == "docker":
        import docker

        if isinstance(exc, docker.errors.APIError) and status is not None and status >= 500:
            # The engine's 5xx mostly relays a registry or a daemon hiccup; "not found" is a 404, a bad request 400.
            return True
    return status in TRANSIENT_STATUS


@dataclass(frozen=True)
class Policy:
    """Exponential backoff: base, 2*base, 4*base … capped at max_delay; at most `attempts` calls in all."""

    attempts: int = 5
    base: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        return min(self.max_delay, self.base * 2 ** (attempt - 1))


DEFAULT = Policy()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def call(
    fn: Callable[[], T],
    what: str,
    *,
    policy: Policy = DEFAULT,
    transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger = log,
    level: int = logging.WARNING,
) -> T:
    """fn() until it succeeds. A transient failure is logged ("<what> failed (<error>); retry 1/4 in 0.5s") and
    retried after the policy's backoff; a verdict, a full disk, or the last transient failure is raised as it is."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.log(level, "%s failed (%s); retry %d/%d in %.1fs", what, first_line(exc) if exc else "?",
                   state.attempt_number, policy.attempts - 1, wait)  # fmt: skip

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, policy.attempts)),
        wait=tenacity.wait_exponential(multiplier=policy.base, exp_base=2, max=policy.max_delay),
        # A full disk is not freed within seconds: it goes to the task's retries at once (NoSpace).
        retry=tenacity.retry_if_exception(lambda exc: transient(exc) and not no_space(exc)),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)
