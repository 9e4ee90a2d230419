"""modelpkg.dataset: the shipped digits and their fixed split, numpy only, equal to what scikit-learn computes."""

from __future__ import annotations

import numpy as np

from modelpkg.dataset import HELDOUT_FRACTION, SPLIT_SEED, load_split


def test_heldout_split_is_fixed_stratified_and_a_quarter_of_the_data():
    x_train, x_heldout, y_train, y_heldout = load_split()
    again = load_split()
    assert np.array_equal(x_heldout, again[1]) and np.array_equal(y_heldout, again[3])
    assert x_heldout.shape == (450, 64) and x_train.shape == (1347, 64)
    assert x_heldout.dtype == np.float32 and x_heldout.min() >= 0 and x_heldout.max() <= 16
    everything = np.concatenate([y_train, y_heldout])
    assert np.abs(np.bincount(y_heldout) - np.bincount(everything) / 4).max() <= 1  # stratified


def test_the_shipped_split_is_exactly_scikit_learns_digits_and_train_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, target = load_digits(return_X_y=True)
    expected = train_test_split(
        features.astype(np.float32),
        target.astype(np.int64),
        test_size=HELDOUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=target,
    )
    for shipped, computed in zip(load_split(), expected, strict=True):
        assert shipped.dtype == computed.dtype
        assert np.array_equal(shipped, computed)
