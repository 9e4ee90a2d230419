"""The model package, verified and loaded once at start-up.

The package is model.onnx + labels.json + model.json (the manifest, with the sha256 of every other file).
The app refuses to start unless every file matches its hash: a model that was altered or half-copied must
never answer requests. The rules are modelpkg's, the one model-package library training and the pipeline
use too (the image ships it beside this package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelpkg.manifest import MANIFEST, MODEL_FILE, PROBABILITIES, ManifestError, verify_serving

__all__ = ["MANIFEST", "Model", "ModelLoadError", "load"]


class ModelLoadError(RuntimeError):
    """The model package is missing, altered or unusable; the message names the file. The app must not start."""


@dataclass
class Model:
    """A verified package ready to score; predict() is thread-safe (onnxruntime sessions are)."""

    name: str
    version: str
    sha256: str  # of the model.json bytes: the identity of this model version everywhere
    accuracy: float | None
    labels: list[str]
    session: ort.InferenceSession = field(repr=False)
    input_name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, 64] (0..16, 16 = ink) -> probabilities float32 [N, len(labels)]."""
        (probabilities,) = self.session.run([PROBABILITIES], {self.input_name: batch.astype(np.float32)})
        return probabilities


def load(model_dir: str | Path, threads: int = 1) -> Model:
    """Verify then load the package; ModelLoadError (naming the file) if anything is wrong."""
    try:
        package = verify_serving(model_dir)
    except ManifestError as exc:
        raise ModelLoadError(f"{exc}; MODEL_DIR must hold an intact model package") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # per worker: workers x threads should not exceed the CPUs
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(package.model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable models
        raise ModelLoadError(f"{MODEL_FILE}: onnxruntime cannot load it: {exc}") from None
    outputs = {output.name: output.shape for output in session.get_outputs()}
    labels = package.labels
    if PROBABILITIES not in outputs or outputs[PROBABILITIES][-1] != len(labels):
        raise ModelLoadError(f"{MODEL_FILE}: needs output '{PROBABILITIES}' [N, {len(labels)}], has {outputs}")
    accuracy = package.manifest["metrics"].get("accuracy")
    model = Model(
        name=str(package.manifest["name"]),
        version=str(package.manifest["version"]),
        sha256=package.sha256,
        accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
        labels=labels,
        session=session,
        input_name=session.get_inputs()[0].name,
    )
    try:
        model.predict(np.zeros((1, 64), dtype=np.float32))  # fail now, not on the first request
    except Exception as exc:
        raise ModelLoadError(f"{MODEL_FILE}: cannot score a [1, 64] float32 batch: {exc}") from None
    return model
