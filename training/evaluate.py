"""Score a model package on the fixed held-out split, exactly as the app will run it.

The accuracy is measured on the exported ONNX file with onnxruntime and the package's labels.json, not on
the scikit-learn object: the gate must judge the artefact that ships, conversion included. The
model_refresh DAG calls evaluate(); `python -m training.evaluate DIR` prints the same dict as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelship.manifest import ManifestError, manifest_sha256, verify_package
from training.dataset import load_split

MODEL_FILE = "model.onnx"
PROBABILITIES = "probabilities"


def heldout_metrics(model_path: str | os.PathLike[str], labels: list[str]) -> dict[str, Any]:
    """{accuracy, heldout_size} of an ONNX model whose probability columns are ordered as `labels`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic, and polite on a 2-core CI machine
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    _, x_heldout, _, y_heldout = load_split()
    (probabilities,) = session.run([PROBABILITIES], {session.get_inputs()[0].name: x_heldout})
    predicted = np.asarray(labels)[np.argmax(probabilities, axis=1)]
    correct = predicted == y_heldout.astype(str)
    return {"accuracy": round(float(correct.mean()), 6), "heldout_size": int(correct.size)}


def evaluate(package_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify the package's hashes, then score it: {accuracy, heldout_size, name, version, manifest_sha256}."""
    package = Path(package_dir)
    manifest = verify_package(package)
    labels_file = manifest.get("labels_file", "labels.json")
    if MODEL_FILE not in manifest["files"] or labels_file not in manifest["files"]:
        raise ManifestError(f"{package}: manifest must list {MODEL_FILE} and {labels_file}")
    labels = json.loads((package / labels_file).read_text(encoding="utf-8"))
    return {
        **heldout_metrics(package / MODEL_FILE, labels),
        "name": manifest["name"],
        "version": manifest["version"],
        "manifest_sha256": manifest_sha256(package),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("package_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.package_dir)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
