"""Issue 21: the validation split never overlaps the training images used, never touches
the test set, and is the same for the same seed (what a resumed search checks)."""

from __future__ import annotations

import numpy as np
import pytest

from netmorph_cli.errors import DataError
from netmorph_cli.search.validation import validation_split
from netmorph_cli.training.data import synthetic


def test_the_split_holds_out_training_images_only_and_is_reproducible():
    data = synthetic(n_train=200, n_test=40)
    s = validation_split(data, 0.1, seed=3)
    assert len(s.val_indices) == 20 and len(s.train.y_train) == 180
    # the held-out images are the originals at those indices, the rest are the others
    assert np.array_equal(s.train.x_test, data.x_train[s.val_indices])
    rest = np.setdiff1d(np.arange(200), s.val_indices)
    assert np.array_equal(s.train.x_train, data.x_train[rest])
    assert not set(s.val_indices) & set(rest)
    # the data set's own test images are nowhere in it
    flat = {x.tobytes() for x in np.concatenate([s.train.x_train, s.train.x_test])}
    assert not any(x.tobytes() in flat for x in data.x_test)
    again = validation_split(data, 0.1, seed=3)
    assert again.digest == s.digest and np.array_equal(again.val_indices, s.val_indices)
    other = validation_split(data, 0.1, seed=4)
    assert other.digest != s.digest
    assert s.record() == {"seed": 3, "size": 20, "sha256": s.digest}


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001, -0.5])
def test_a_fraction_that_leaves_nothing_is_refused(fraction):
    with pytest.raises(DataError, match="leaves no validation or no training images"):
        validation_split(synthetic(n_train=100, n_test=10), fraction)
