"""Train the digits classifier and write a model package: model.onnx, labels.json, model.json.

    python -m training.train --out DIR --version VERSION [--name digits] [--seed N] [--degrade FLOAT]

The model is StandardScaler + a small MLP (held-out accuracy ~0.97, converts to ONNX with standard
operators only). The data set's digits fill the 8x8 frame vertically but sit left, centred or right
horizontally, while the app centres whatever digit it is sent (app/classifier/imaging.py); the training set
is therefore augmented with copies shifted half a column each way, so the model does not depend on where
in the frame the digit sits (a linear model cannot absorb that shift, which is why this is an MLP).

It is exported with skl2onnx without ZipMap, so the ONNX outputs are plain tensors: `label` int64 [N]
and `probabilities` float32 [N, 10] whose columns are ordered as labels.json.
The recorded accuracy is measured on the exported ONNX file (modelpkg.evaluate), never on scikit-learn.

--degrade F (0..1, default 0) exists for tests and demos of the quality gate: a fraction F of the training
labels is replaced by random digits, so e.g. --degrade 0.9 yields a package well below the 0.95 gate that
is otherwise perfectly valid (hashes, schema, ONNX). Never use it for a real model.

The package is built in a temporary folder next to --out and renamed into place at the end, so a failure
leaves nothing behind; --out must not exist or be empty.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from modelpkg.atomic import atomic_dir
from modelpkg.dataset import HELDOUT_FRACTION, LABELS, SPLIT_SEED, load_split
from modelpkg.evaluate import heldout_metrics
from modelpkg.manifest import LABELS_FILE, MODEL_FILE, manifest_sha256, write_manifest

INPUT_SPEC: dict[str, Any] = {
    "name": "pixels",
    "shape": [None, 64],
    "dtype": "float32",
    "description": "8x8 grayscale digit, 0..16 where 16 is ink",
}
# Pinned so a newer onnx package cannot silently emit opsets the serving onnxruntime lacks.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _training_labels(y_train: np.ndarray, degrade: float, seed: int) -> np.ndarray:
    """The true labels, with a fraction `degrade` of them replaced by random digits (see --degrade)."""
    if not 0.0 <= degrade <= 1.0:
        raise ValueError(f"degrade must be within 0..1, got {degrade}")
    rng = np.random.default_rng(seed)
    labels = y_train.copy()
    noisy = rng.random(labels.size) < degrade
    labels[noisy] = rng.integers(0, len(LABELS), size=int(noisy.sum()))
    return labels


def _half_column_shift(images: np.ndarray, direction: int) -> np.ndarray:
    """Shift [N, 64] digits half a column left (-1) or right (+1): each column becomes the mean of two.

    This is what box-resampling a digit that sits half a column off produces, i.e. what the app's
    centring does to a digit of the other width parity.
    """
    grid = images.reshape(-1, 8, 8)
    neighbour = np.zeros_like(grid)
    if direction > 0:
        neighbour[:, :, 1:] = grid[:, :, :-1]
    else:
        neighbour[:, :, :-1] = grid[:, :, 1:]
    return ((grid + neighbour) / 2).reshape(-1, 64)


def _augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training set plus half-column shifts both ways, skipping shifts that would push ink off-frame."""
    xs, ys = [x], [y]
    for direction in (-1, 1):
        edge = 0 if direction < 0 else 7
        keeps_ink = x.reshape(-1, 8, 8)[:, :, edge].sum(axis=1) == 0
        xs.append(_half_column_shift(x[keeps_ink], direction))
        ys.append(y[keeps_ink])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _build(package: Path, version: str, name: str, seed: int, degrade: float) -> dict[str, Any]:
    x_train, _, y_train, _ = load_split()
    x_fit, y_fit = _augment(x_train, _training_labels(y_train, degrade, seed))
    # Early stopping ends training in a few dozen epochs, also with --degrade (noise never converges).
    classifier = MLPClassifier((128,), alpha=1e-3, early_stopping=True, max_iter=200, random_state=seed)
    pipeline = make_pipeline(StandardScaler(), classifier)
    # One BLAS thread: reproducible, and much faster than fighting for 2 cores with the rest of CI.
    with threadpool_limits(limits=1):
        pipeline.fit(x_fit, y_fit)
    # Probability columns follow classes_; labels.json must describe exactly that order.
    if [str(c) for c in classifier.classes_] != LABELS:
        raise RuntimeError(f"classifier learned classes {classifier.classes_.tolist()}, expected 0..9")
    onnx_model = to_onnx(
        pipeline,
        initial_types=[(INPUT_SPEC["name"], FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    (package / MODEL_FILE).write_bytes(onnx_model.SerializeToString())
    (package / LABELS_FILE).write_text(json.dumps(LABELS) + "\n", encoding="utf-8")
    metrics = heldout_metrics(package / MODEL_FILE, LABELS)
    metrics["train_size"] = int(x_train.shape[0])
    return write_manifest(
        package,
        name=name,
        version=version,
        framework="onnx",
        input_spec=INPUT_SPEC,
        metrics=metrics,
        extra={
            "labels_file": LABELS_FILE,
            "training": {
                "algorithm": "StandardScaler+MLPClassifier(128)",
                "augmentation": {"kind": "half-column shifts", "size": int(x_fit.shape[0])},
                "dataset": "sklearn.datasets.load_digits",
                "split": {"heldout_fraction": HELDOUT_FRACTION, "random_state": SPLIT_SEED},
                "seed": seed,
                "degrade": degrade,
                "versions": {
                    "scikit-learn": sklearn.__version__,
                    "skl2onnx": skl2onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
            },
        },
    )


def train_package(
    out: str | os.PathLike[str], version: str, name: str = "digits", degrade: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """Train, export and write a complete package at `out`; return its manifest."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; refusing to overwrite")
    with atomic_dir(out) as staging:  # 0755: the non-root serving user must read the model
        return _build(staging, version, name, seed, degrade)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="package folder to create (absent or empty)")
    parser.add_argument("--version", required=True, help="model version recorded in model.json")
    parser.add_argument("--name", default="digits", help="model name (default: digits)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--degrade", type=float, default=0.0, help="tests/demos only, see above")
    args = parser.parse_args(argv)
    try:
        manifest = train_package(args.out, args.version, args.name, args.degrade, args.seed)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "out": str(args.out),
        "name": manifest["name"],
        "version": manifest["version"],
        "metrics": manifest["metrics"],
        "manifest_sha256": manifest_sha256(args.out),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
