"""The quality gate model_refresh runs before a version may be promoted.

validate_model() fetches the version (which verifies every sha256), scores the exported ONNX file on the
project's fixed held-out split (modelpkg.evaluate) and compares the measured accuracy with a minimum and,
optionally, with the version the alias currently points at. A failed gate raises GateFailed with a
message naming the gate and the margin, so the failed run in the Airflow UI says why at a glance.

run_validate() / run_promote() are the two model_refresh steps: they read the DAG params, open the store,
and raise verdicts (modelship.verdicts) for what a retry cannot fix (a failed gate, a missing version, bad
bytes, a lost promotion race, a bad param), while network trouble stays retryable.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from modelpkg.manifest import manifest_sha256
from modelship.lineage import ModelEvent, ValidatedModel
from modelship.model_store import IntegrityError, ModelNotFound, ModelStore, open_store
from modelship.verdicts import Verdict

log = logging.getLogger(__name__)


class GateFailed(Verdict, Exception):
    """The model is valid but not good enough to promote; the message names the gate and the margin."""


class BadParam(Verdict, ValueError):
    """A trigger param that cannot be used; the message names it."""


def validate_model(
    store: ModelStore,
    name: str,
    version: str,
    min_accuracy: float,
    must_beat_promoted: bool,
    alias: str,
) -> ValidatedModel:
    """Fetch, verify and score `version`; raise GateFailed unless it passes every gate.

    promoted_before is the version the alias pointed at when the gate ran (None: unset), so promotion can
    compare-and-swap against exactly that.
    """
    from modelpkg.evaluate import evaluate  # onnxruntime + scikit-learn: import only when scoring

    if not 0.0 <= float(min_accuracy) <= 1.0:
        raise BadParam(f"min_accuracy must be within 0..1, got {min_accuracy}")
    # Read the alias before scoring: promotion must fail if it moves while we evaluate.
    promoted = store.read_alias(name, alias)
    promoted_before = promoted["version"] if promoted else None

    with tempfile.TemporaryDirectory(prefix="modelship-validate-") as tmp:
        package = Path(tmp) / "model"
        manifest = store.fetch(name, version, package)
        result = evaluate(package)
        sha = manifest_sha256(package)
    version = manifest["version"]  # an alias given as `version` resolves to the real one
    accuracy = float(result["accuracy"])
    recorded = manifest["metrics"].get("accuracy")
    log.info(
        "model %s %s (sha256 %s): measured accuracy %.4f on %d held-out images (manifest says %s)",
        name, version, sha, accuracy, result["heldout_size"], recorded,
    )  # fmt: skip

    if accuracy < min_accuracy:
        raise GateFailed(
            f"model {name} {version}: accuracy {accuracy:.4f} is below the minimum {min_accuracy:.4f} "
            f"by {min_accuracy - accuracy:.4f}"
        )
    # Re-validating the version the alias already points at must not fail for not beating itself.
    if must_beat_promoted and promoted_before and promoted_before != version:
        before = store.read_manifest(name, promoted_before)["metrics"].get("accuracy")
        if isinstance(before, int | float) and not accuracy > before:
            raise GateFailed(
                f"model {name} {version}: accuracy {accuracy:.4f} does not beat promoted {promoted_before} "
                f"({before:.4f}) by {accuracy - before:.4f}"
            )
    return ValidatedModel(name=name, version=version, sha256=sha, accuracy=accuracy, promoted_before=promoted_before)


def run_validate(params: dict[str, Any], store: ModelStore | None = None) -> ValidatedModel:
    """model_refresh's `validate` step: check the params, run the gates (a verdict on what cannot heal)."""
    version = str(params.get("version") or "").strip()
    if not version:
        raise BadParam("param 'version' is required: the published model version to validate and promote")
    store = store or open_store()
    name = str(params["model_name"])
    try:
        store.resolve(name, version)
    except ModelNotFound as exc:  # say which params to fix, not only what the store lacks
        raise ModelNotFound(f"{exc} (check params model_name={name!r} and version={version!r})") from None
    return validate_model(
        store,
        name=name,
        version=version,
        min_accuracy=float(params["min_accuracy"]),
        must_beat_promoted=bool(params["must_beat_promoted"]),
        alias=str(params["alias"]),
    )


def run_promote(validated: ValidatedModel, alias: str, store: ModelStore | None = None) -> ModelEvent:
    """model_refresh's `promote` step: move the alias only if it is still where `validate` saw it."""
    store = store or open_store()
    name, version = validated.name, validated.version
    # Promote exactly the bytes that passed the gate (versions are immutable, but blobs can be edited).
    sha = store.manifest_sha256(name, version)
    if sha != validated.sha256:
        raise IntegrityError(f"model {name} {version} changed since validation: sha256 {validated.sha256} -> {sha}")
    store.promote(name, version, alias=alias, expected_current=validated.promoted_before)
    return ModelEvent(name=name, version=version, sha256=validated.sha256, accuracy=validated.accuracy)
