"""The model package, verified and loaded once at start-up.

The package is model.onnx + labels.json + model.json (the manifest, with the sha256 of every other file).
The app refuses to start unless every file matches its hash: a model that was altered or half-copied must
never answer requests. The image contains only app/, so this is a deliberately small copy of
modelship.manifest.verify_package; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnxruntime as ort

MANIFEST = "model.json"
MODEL_FILE = "model.onnx"
PROBABILITIES = "probabilities"


class ModelLoadError(RuntimeError):
    """The model package is missing, altered or unusable; the message names the file. The app must not start."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(model_dir: Path) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of the model.json bytes) once every listed file matches; else ModelLoadError."""
    try:
        raw = (model_dir / MANIFEST).read_bytes()
        manifest = json.loads(raw)
        files = manifest["files"]
        name, version = str(manifest["name"]), str(manifest["version"])
        labels_file = manifest.get("labels_file", "labels.json")
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir / MANIFEST}: missing; MODEL_DIR must hold a model package") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{model_dir / MANIFEST}: unreadable manifest: {exc!r}") from None
    if not isinstance(files, dict) or not isinstance(labels_file, str):
        raise ModelLoadError(f"{model_dir / MANIFEST}: 'files' must be an object, 'labels_file' a string")
    for needed in (MODEL_FILE, labels_file):
        if needed not in files:  # an unlisted file would be loaded unverified
            raise ModelLoadError(f"{needed}: not listed in {MANIFEST}, so it cannot be verified")
    root = model_dir.resolve()
    for rel, expected in sorted(files.items()):
        pure = PurePosixPath(rel)
        path = model_dir / pure
        if pure.is_absolute() or ".." in pure.parts or not path.resolve().is_relative_to(root):
            raise ModelLoadError(f"{rel}: path escapes the model package")
        if not path.is_file():
            raise ModelLoadError(f"{rel}: missing from {model_dir} (listed in {MANIFEST}, sha256 {expected})")
        actual = _sha256(path)
        if actual != expected:
            raise ModelLoadError(f"{rel}: altered: sha256 is {actual}, {MANIFEST} expects {expected}")
    manifest.update(name=name, version=version, labels_file=labels_file)
    return manifest, hashlib.sha256(raw).hexdigest()


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
    model_dir = Path(model_dir)
    manifest, sha256 = verify(model_dir)
    labels_path = model_dir / manifest["labels_file"]
    try:
        labels = [str(label) for label in json.loads(labels_path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{manifest['labels_file']}: not a JSON list of labels: {exc!r}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # per worker: workers x threads should not exceed the CPUs
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable models
        raise ModelLoadError(f"{MODEL_FILE}: onnxruntime cannot load it: {exc}") from None
    outputs = {output.name: output.shape for output in session.get_outputs()}
    if PROBABILITIES not in outputs or outputs[PROBABILITIES][-1] != len(labels):
        raise ModelLoadError(f"{MODEL_FILE}: needs output '{PROBABILITIES}' [N, {len(labels)}], has {outputs}")
    metrics = manifest.get("metrics")
    accuracy = metrics.get("accuracy") if isinstance(metrics, dict) else None
    model = Model(
        name=manifest["name"],
        version=manifest["version"],
        sha256=sha256,
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
