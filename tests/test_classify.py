"""The pseudo-label SVM: it must correct a noisy clustering and give calibrated confidences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from visclust.classify import PseudoLabelClassifier, centroid_margin, confident_members, softmax
from visclust.evaluate import hungarian_accuracy
from visclust.exceptions import InputError


def noisy_clustering(y, share, seed=0):
    """``y`` with ``share`` of the rows moved to another cluster, as a poor clustering does."""
    rng = np.random.default_rng(seed)
    out = y.copy()
    flip = rng.random(len(y)) < share
    out[flip] = (y[flip] + rng.integers(1, y.max() + 1, flip.sum())) % (y.max() + 1)
    return out


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(600, centers=4, n_features=10, cluster_std=1.5, random_state=0)
    return X.astype(np.float32), y


def test_self_training_raises_accuracy_over_the_clustering_it_starts_from(blobs):
    X, y = blobs
    start = noisy_clustering(y, 0.25)
    before = hungarian_accuracy(y, start)
    clf = PseudoLabelClassifier(confident_fraction=0.5, self_training=2).fit(X, start)
    after = hungarian_accuracy(y, clf.predict(X))
    assert before < 0.8
    assert after > 0.97


def test_confident_members_are_the_top_share_of_each_cluster():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
    scores = np.array([1, 4, 3, 2, 9, 5, 8, 7, 100])
    keep = confident_members(scores, labels, 0.5, min_per_cluster=1)
    assert keep.tolist() == [1, 2, 4, 6]


def test_confidences_are_calibrated_on_overlapping_groups():
    X, y = make_blobs(3000, centers=3, n_features=4, cluster_std=3.0, random_state=2)
    clf = PseudoLabelClassifier().fit(X[:1500], y[:1500])
    proba = clf.predict_proba(X[1500:])
    conf, pred = proba.max(1), clf.classes_[proba.argmax(1)]
    correct = pred == y[1500:]
    assert 0.6 < correct.mean() < 0.97  # overlapping: confidences matter
    # Expected calibration error over 5 confidence bins.
    bins = np.minimum((conf * 5).astype(int), 4)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
              for b in range(5) if (bins == b).any())
    assert ece < 0.06
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)


def test_noise_rows_are_not_used_and_classes_keep_their_values(blobs):
    X, y = blobs
    labels = np.where(np.arange(len(y)) % 10 == 0, -1, y + 5)
    clf = PseudoLabelClassifier().fit(X, labels)
    assert clf.classes_.tolist() == [5, 6, 7, 8]
    assert set(np.unique(clf.predict(X))) <= {5, 6, 7, 8}


def test_arrays_round_trip(blobs):
    X, y = blobs
    clf = PseudoLabelClassifier(self_training=0).fit(X, y)
    clf2 = PseudoLabelClassifier.from_arrays(clf.get_params(), clf.to_arrays())
    np.testing.assert_array_equal(clf.predict_proba(X), clf2.predict_proba(X))


def test_bad_confident_fraction():
    with pytest.raises(InputError, match=r"confident_fraction must be in \(0, 1\]"):
        PseudoLabelClassifier(confident_fraction=0).fit(np.zeros((4, 2)), np.array([0, 0, 1, 1]))


def test_centroid_margin_is_larger_for_typical_members():
    X = np.array([[0.0], [0.9], [10.0]], np.float32)
    labels = np.array([0, 0, 1])
    m = centroid_margin(X, labels, np.array([[0.0], [10.0]], np.float32))
    assert m[0] > m[1] > 0


def test_softmax_is_stable_for_large_values():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1, 0], [0.5, 0.5]])


def test_auto_keeps_the_svm_where_clusters_are_linear_and_votes_where_they_are_not():
    """Label-free choice of the assigning rule: on blobs the SVM reproduces the clusters, on
    two interleaved moons (clusters a linear rule cannot separate) the neighbour vote does."""
    from sklearn.datasets import make_moons

    X, y = make_blobs(900, centers=4, n_features=8, cluster_std=1.0, random_state=1)
    lin = PseudoLabelClassifier(kind="auto").fit(X.astype(np.float32), y)
    assert lin.kind_ == "svm" and lin.agreement_["svm"] > 0.98 and len(lin.reference_) == 0
    M, m = make_moons(1200, noise=0.06, random_state=0)
    moons = PseudoLabelClassifier(kind="auto").fit(M.astype(np.float32), m)
    assert moons.kind_ == "knn"
    assert moons.agreement_["knn"] > 0.98 > moons.agreement_["svm"] + 0.05
    assert np.mean(moons.predict(M) == m) > 0.98
    proba = moons.predict_proba(M)
    assert np.allclose(proba.sum(1), 1) and proba.max(1).mean() > 0.9


def test_vote_reference_is_capped_and_drawn_from_every_cluster(blobs):
    X, y = blobs
    clf = PseudoLabelClassifier(kind="knn", max_reference=100).fit(X, y)
    assert clf.kind_ == "knn" and len(clf.reference_) == 100
    assert set(np.unique(clf.reference_labels_)) == set(range(4))
    assert hungarian_accuracy(y, clf.predict(X)) > 0.9


def test_batched_ovr_svm_solves_liblinears_problem():
    """Many clusters train all one-vs-rest SVMs at once by L-BFGS: the same objective as
    LinearSVC, so the same weights (to solver tolerance) and the same predictions."""
    from sklearn.svm import LinearSVC

    from visclust.classify import ovr_squared_hinge

    X, y = make_blobs(1500, centers=12, n_features=16, cluster_std=3.0, random_state=0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ref = LinearSVC(C=1.0, class_weight="balanced", max_iter=5000, tol=1e-6).fit(X, y)
    coef, intercept = ovr_squared_hinge(X, y, 12, C=1.0)
    assert np.abs(coef - ref.coef_).max() < 0.02 and np.abs(intercept - ref.intercept_).max() < 0.02
    assert np.mean((X @ coef.T + intercept).argmax(1) == ref.predict(X)) > 0.995


def test_many_clusters_use_the_batched_solver(monkeypatch):
    from visclust import classify

    calls = []
    real = classify.ovr_squared_hinge
    monkeypatch.setattr(classify, "ovr_squared_hinge", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(classify, "TORCH_SVM_CLASSES", 5)
    X, y = make_blobs(600, centers=8, n_features=6, random_state=0)
    clf = PseudoLabelClassifier(kind="svm", self_training=0).fit(X.astype(np.float32), y)
    assert calls and set(calls) == {8}
    assert hungarian_accuracy(y, clf.predict(X)) > 0.95
