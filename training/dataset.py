"""The data set and the fixed held-out split every model is gated on.

scikit-learn bundles the UCI digits (1,797 8x8 images, values 0..16 where 16 is ink), so training needs no
network. The split is fixed (stratified, 25 %, random_state 42): the held-out quarter is effectively
shipped with the project, so accuracies of different model versions are comparable and a model can never
be tuned on the images that gate it.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HELDOUT_FRACTION = 0.25
SPLIT_SEED = 42
LABELS = [str(digit) for digit in range(10)]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_heldout, y_train, y_heldout); X float32 [N, 64] in 0..16, y int64 in 0..9."""
    features, target = load_digits(return_X_y=True)
    x_train, x_heldout, y_train, y_heldout = train_test_split(
        features.astype(np.float32),
        target.astype(np.int64),
        test_size=HELDOUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=target,
    )
    return x_train, x_heldout, y_train, y_heldout
