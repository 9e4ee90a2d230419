"""The data set and the fixed held-out split every model is gated on.

The UCI digits as scikit-learn bundles them (1,797 8x8 images, values 0..16 where 16 is ink), shipped here
as data/digits.npz with the split: stratified, 25 % held out, random_state 42 (sklearn's train_test_split,
recorded once as index arrays; tests/modelpkg proves the file equals what scikit-learn computes). So the
held-out quarter ships with the project: accuracies of different model versions are comparable, a model can
never be tuned on the images that gate it, and reading it needs numpy alone (the serving image has no
scikit-learn).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DATA = Path(__file__).with_name("data") / "digits.npz"
HELDOUT_FRACTION = 0.25
SPLIT_SEED = 42
LABELS = [str(digit) for digit in range(10)]


@functools.cache
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(DATA) as data:
        return data["images"], data["labels"], data["train_index"], data["heldout_index"]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_heldout, y_train, y_heldout); X float32 [N, 64] in 0..16, y int64 in 0..9 (fresh copies)."""
    images, labels, train, heldout = _arrays()
    features, target = images.astype(np.float32), labels.astype(np.int64)
    return features[train], features[heldout], target[train], target[heldout]
