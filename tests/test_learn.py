"""The optional learned step: an autoencoder on frozen features (N2D)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from visclust.evaluate import hungarian_accuracy
from visclust.exceptions import InputError
from visclust.learn import FeatureAutoencoder


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(500, centers=4, n_features=32, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(blobs):
    return FeatureAutoencoder(code_size=4, hidden=(64, 64), epochs=40, random_state=0).fit(blobs[0])


def test_training_lowers_the_reconstruction_loss(fitted, blobs):
    assert fitted.loss_curve_[-1] < 0.5 * fitted.loss_curve_[0]
    assert fitted.reconstruction_error(blobs[0]) < fitted.loss_curve_[0]


def test_the_code_keeps_the_groups_apart(fitted, blobs):
    X, y = blobs
    code = fitted.transform(X)
    assert code.shape == (500, 4) and code.dtype == np.float32
    assert hungarian_accuracy(y, KMeans(4, n_init=5, random_state=0).fit_predict(code)) == 1.0


def test_same_seed_same_code(blobs):
    X = blobs[0][:100]
    a = FeatureAutoencoder(code_size=3, hidden=(16,), epochs=3, random_state=1).fit_transform(X)
    b = FeatureAutoencoder(code_size=3, hidden=(16,), epochs=3, random_state=1).fit_transform(X)
    np.testing.assert_array_equal(a, b)


def test_max_steps_bounds_the_training(blobs):
    ae = FeatureAutoencoder(hidden=(8,), epochs=50, max_steps=3, batch_size=100).fit(blobs[0])
    assert len(ae.loss_curve_) == 1


@pytest.mark.parametrize("param, value, match", [
    ("code_size", 0, "code_size must be a positive integer"),
    ("epochs", 1.5, "epochs must be a positive integer"),
    ("lr", 0, "lr must be positive"),
])
def test_bad_parameters(param, value, match):
    with pytest.raises(InputError, match=match):
        FeatureAutoencoder(**{param: value}).fit(np.zeros((10, 3), np.float32))


def test_transform_checks_the_feature_count(fitted):
    with pytest.raises(InputError, match="expected 32 features"):
        fitted.transform(np.zeros((2, 5), np.float32))
