"""What the model store refuses or cannot do. Refusals that asking again cannot change are verdicts
(modelship.verdicts): a missing version, tampered bytes, a lost promotion race, a bad name. An outage is not:
StoreUnavailable is what is left after the retries, and Airflow's task retries may outlast it."""

from __future__ import annotations

from typing import Final

from modelpkg.manifest import ManifestError
from modelship.verdicts import Verdict


class ModelStoreError(Exception):
    """Anything the model store refuses or cannot do; the message names model, version or file."""


class ModelNotFound(ModelStoreError, Verdict):
    """No such model, version or alias."""


class VersionExists(ModelStoreError, Verdict):
    """The version is already published; versions are immutable."""


class PromotionConflict(ModelStoreError, Verdict):
    """The alias moved between reading it and writing it (or was not where the caller expected)."""


class IntegrityError(ModelStoreError, ManifestError, Verdict):
    """Stored bytes do not match their manifest (or an alias does not match its version)."""


class InvalidName(ModelStoreError, ValueError, Verdict):
    """A model name, version or alias that cannot be a path segment."""


class StoreUnavailable(ModelStoreError):
    """The storage service did not answer, even after the retries."""


class _PreconditionFailed(Exception):
    """A conditional write lost: the object exists / changed (internal; mapped to a public error)."""


class _Any:
    def __repr__(self) -> str:
        return "ANY"


# promote(expected_current=ANY): do not check where the alias was (the write is still compare-and-swap).
ANY: Final = _Any()
