"""Score a model package on the fixed held-out split, exactly as the app will run it.

The accuracy is measured on the exported ONNX file with onnxruntime and the package's labels, not on the
training library's object: the gate must judge the artefact that ships, conversion included. Training
records it in the manifest, model_refresh measures it again before promoting; `python -m modelpkg.evaluate
DIR` prints the same dict as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelpkg.dataset import load_split
from modelpkg.manifest import PROBABILITIES, ManifestError, verify_serving


def heldout_metrics(model_path: str | os.PathLike[str], labels: list[str]) -> dict[str, Any]:
    """{accuracy, heldout_size} of an ONNX model whose probability columns are ordered as `labels`."""
    import onnxruntime as ort

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
    package = verify_serving(package_dir)
    return {
        **heldout_metrics(package.model_file, package.labels),
        "name": package.manifest["name"],
        "version": package.manifest["version"],
        "manifest_sha256": package.sha256,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelpkg.evaluate", description=__doc__)
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
