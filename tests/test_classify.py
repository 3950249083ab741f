"""The pseudo-label SVM: it must correct a noisy clustering and give calibrated confidences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from visclust.classify import (PseudoLabelClassifier, centroid_margin, confident_members, fit_temperature,
                               neighbour_votes, vote_size, NEAREST_TIE_BREAK)
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


def test_rows_the_svm_cannot_tell_apart_end_self_training_instead_of_a_traceback():
    """Three clusters of identical rows: the first SVM puts every row in one cluster, and
    retraining on that one cluster raised liblinear's "needs samples of at least 2 classes"."""
    X = np.ones((90, 4), np.float32)
    y = np.repeat([0, 1, 2], 30)
    clf = PseudoLabelClassifier(kind="svm", random_state=0).fit(X, y)
    assert list(clf.classes_) == [0, 1, 2] and len(set(clf.predict(X))) == 1
    assert np.allclose(clf.predict_proba(X[:2]).sum(1), 1.0)


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


def test_probabilities_are_stable_for_large_decision_values():
    clf = PseudoLabelClassifier.from_arrays({}, {"coef": np.array([[1000.0], [0.0]], np.float32),
                                                 "intercept": np.zeros(2, np.float32), "classes": np.array([0, 1]),
                                                 "temperature": np.array([1.0])})
    np.testing.assert_allclose(clf.predict_proba(np.array([[1.0], [0.0]], np.float32)), [[1, 0], [0.5, 0.5]])


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


@pytest.fixture
def small_blocks(monkeypatch):
    """Every row-blocked computation in blocks of 256 rows (the smallest), so a test of a
    few hundred rows crosses block boundaries."""
    from visclust import cluster

    monkeypatch.setattr(cluster, "BLOCK_BYTES", 1)
    assert cluster.block_rows(1000) == 256


@pytest.mark.parametrize("kind", ["svm", "knn"])
def test_blockwise_outputs_equal_the_whole_matrix(small_blocks, kind):
    """decision_function, predict_proba, predict and predict_with_confidence work a block of
    rows at a time; across block boundaries they must equal the whole-matrix formulas."""
    rng = np.random.default_rng(0)
    k, d, n = 7, 5, 700
    arrays = {"coef": rng.standard_normal((k, d)).astype(np.float32),
              "intercept": rng.standard_normal(k).astype(np.float32), "classes": np.arange(10, 10 + k),
              "temperature": np.array([1.7])}
    if kind == "knn":
        arrays["reference"] = rng.standard_normal((300, d)).astype(np.float32)
        arrays["reference_labels"] = rng.integers(0, k, 300)
    clf = PseudoLabelClassifier.from_arrays({"n_neighbors": 5}, arrays)
    X = rng.standard_normal((n, d)).astype(np.float32)
    if kind == "svm":
        dec = X @ arrays["coef"].T + arrays["intercept"]
    else:
        d2 = ((X[:, None, :] - arrays["reference"][None]) ** 2).sum(2)
        votes = np.zeros((n, k))
        for i, nn in enumerate(np.argsort(d2, 1)[:, :5]):
            np.add.at(votes[i], arrays["reference_labels"][nn], 1)
            votes[i, arrays["reference_labels"][nn[0]]] += NEAREST_TIE_BREAK
        dec = np.log((votes + 0.5) / (5 + 0.5 * k))
    np.testing.assert_allclose(clf.decision_function(X), dec, rtol=1e-5, atol=1e-5)
    proba = _softmax(dec.astype(np.float64) * 1.7)
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-5, atol=1e-9)
    best, conf = clf.predict_with_confidence(X)
    assert best.tolist() == proba.argmax(1).tolist()  # no ties: the vote's go to the nearest row's class
    assert clf.predict(X).tolist() == (10 + proba.argmax(1)).tolist()
    np.testing.assert_allclose(conf, proba.max(1), rtol=1e-5)
    if kind == "svm":
        top, margin = clf._best_and_margin(X)
        srt = np.sort(dec, 1)
        assert top.tolist() == dec.argmax(1).tolist()
        np.testing.assert_allclose(margin, srt[:, -1] - srt[:, -2], rtol=1e-4, atol=1e-5)


def test_neighbour_votes_count_the_nearest_reference_rows(small_blocks):
    rng = np.random.default_rng(1)
    ref, Z = rng.standard_normal((400, 3)).astype(np.float32), rng.standard_normal((600, 3)).astype(np.float32)
    lab = rng.integers(0, 6, 400)
    votes = neighbour_votes(Z, ref, lab, 6, 9)
    nn = np.argsort(((Z[:, None] - ref[None]) ** 2).sum(2), 1)[:, :9]
    expect = np.stack([np.bincount(lab[row], minlength=6) for row in nn]).astype(np.float32)
    expect[np.arange(600), lab[nn[:, 0]]] += NEAREST_TIE_BREAK  # the nearest one's class
    assert votes.dtype == np.float32
    np.testing.assert_array_equal(votes, expect)


def test_a_tied_vote_goes_to_the_nearest_neighbours_cluster():
    # A cluster of one row (class 1) at 0 beside a cluster of eight (class 0) from 1 on, and
    # eight more (class 2) far away. With 2 voters the lone row's voters are itself and its
    # neighbour, one vote each: the tie went to class 0, the lower number, and class 1 vanished.
    X = np.array([[0.0, 0.0]] + [[1.0 + 0.01 * i, 0.0] for i in range(8)] + [[9.0 + 0.01 * i, 9.0] for i in range(8)],
                 np.float32)
    y = np.array([1] + [0] * 8 + [2] * 8)
    for x, nearest in [(0.0, 1), (0.45, 1), (0.503, 0)]:  # voters: the rows at 0 and 1, one vote each
        votes = neighbour_votes(np.array([[x, 0.0]], np.float32), X, y, 3, 2)
        assert votes[0, :2].round().tolist() == [1, 1] and votes.argmax(1)[0] == nearest
    clf = PseudoLabelClassifier(kind="knn", n_neighbors=2).fit(X, y)
    np.testing.assert_array_equal(clf.predict(X), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_centroid_margin_equals_the_distance_formula_in_blocks(small_blocks, dtype):
    rng = np.random.default_rng(2)
    X, C = rng.standard_normal((700, 4)).astype(dtype), rng.standard_normal((9, 4)).astype(dtype)
    labels = rng.integers(-1, 9, 700)
    d = np.sqrt(((X[:, None].astype(np.float64) - C[None]) ** 2).sum(2))
    own = d[np.arange(700), np.maximum(labels, 0)]
    d[np.arange(700), np.maximum(labels, 0)] = np.inf
    m = centroid_margin(X, labels, C)
    assert m.dtype == dtype
    np.testing.assert_allclose(m, d.min(1) - own, atol=1e-4 if dtype == np.float32 else 1e-9)


def test_fit_temperature_minimises_the_log_loss(small_blocks):
    """The temperature fitted block by block is the minimiser of the whole-matrix log-loss
    (found here by a dense grid), and it undoes a known scaling of calibrated scores."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((900, 5)) * 2
    truth = np.array([rng.choice(5, p=p) for p in _softmax(logits)])  # drawn from softmax(logits)
    dec = (logits / 4).astype(np.float32)  # so the right temperature is about 4
    t = fit_temperature(dec, truth)

    def nll(t):
        p = _softmax(dec.astype(np.float64) * t)
        return -np.mean(np.log(p[np.arange(len(truth)), truth] + 1e-12))
    grid = np.exp(np.linspace(-3, 5, 4001))
    best = grid[np.argmin([nll(g) for g in grid])]
    assert abs(np.log(t) - np.log(best)) < 0.01 and nll(t) <= nll(best) + 1e-6
    assert 2.5 < t < 6


def test_auto_keeps_the_svm_where_clusters_are_linear_and_votes_where_they_are_not(small_blocks):
    """Label-free choice of the assigning rule: on blobs the SVM reproduces the clusters, on
    two interleaved moons (clusters a linear rule cannot separate) the neighbour vote does.
    (In blocks of 256 rows: the held-out rows' scores cross block boundaries.)"""
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
    monkeypatch.setattr(classify, "TORCH_SVM_MIN_CLASSES", 6)
    X, y = make_blobs(600, centers=8, n_features=6, random_state=0)
    clf = PseudoLabelClassifier(kind="svm", self_training=0).fit(X.astype(np.float32), y)
    assert calls and set(calls) == {8}
    assert hungarian_accuracy(y, clf.predict(X)) > 0.95
    calls.clear()
    X, y = make_blobs(600, centers=5, n_features=6, random_state=0)  # fewer clusters: liblinear
    PseudoLabelClassifier(kind="svm", self_training=0).fit(X.astype(np.float32), y)
    assert calls == []


def test_the_vote_on_a_few_rows_does_not_hand_every_row_to_the_largest_cluster():
    # 8 rows in 3 tight groups of 3 / 3 / 2: 15 neighbours would be every reference row, so
    # the largest group would win every vote and the group of 2 would vanish.
    X = np.repeat(np.eye(3, 4, dtype=np.float32) * 5, [3, 3, 2], axis=0)
    X += np.random.default_rng(0).normal(scale=0.1, size=X.shape).astype(np.float32)
    y = np.repeat([0, 1, 2], [3, 3, 2])
    clf = PseudoLabelClassifier(kind="knn").fit(X, y)
    assert vote_size(15, len(clf.reference_), 3) == 2
    np.testing.assert_array_equal(clf.predict(X), y)
    assert vote_size(15, 20000, 10) == 15 and vote_size(15, 20000, 1000) == 15 and vote_size(15, 3, 5) == 1
