import numpy as np
import pytest
from sklearn.datasets import make_blobs

from visclust.evaluate import (external_scores, hungarian_accuracy, internal_scores, match_clusters, purity)
from visclust.exceptions import InputError


def test_hungarian_accuracy_ignores_cluster_names():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy(y, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert hungarian_accuracy(["a", "a", "b", "b"], [5, 5, 5, 5]) == 0.5


def test_hungarian_is_one_to_one_but_purity_is_not():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0, 0, 1, 1, 2, 2])  # 3 clusters for 2 classes
    assert hungarian_accuracy(y, p) == pytest.approx(4 / 6)
    assert purity(y, p) == pytest.approx(5 / 6)


def test_match_clusters_maps_to_best_class():
    assert match_clusters(["cat", "cat", "dog"], [7, 7, 3]) == {7: "cat", 3: "dog"}


def test_external_scores_keys_and_perfect_values():
    s = external_scores(["a", "b", "a"], [1, 0, 1])
    assert s["acc"] == s["nmi"] == s["ari"] == s["purity"] == 1.0 and s["n"] == 3


def test_internal_scores_prefer_the_true_partition():
    X, y = make_blobs(600, centers=4, n_features=8, random_state=0)
    good = internal_scores(X, y)
    bad = internal_scores(X, np.random.default_rng(0).integers(0, 4, len(y)))
    assert good["silhouette"] > bad["silhouette"]
    assert good["davies_bouldin"] < bad["davies_bouldin"]
    assert good["calinski_harabasz"] > bad["calinski_harabasz"]


def test_mismatched_lengths_are_an_input_error():
    with pytest.raises(InputError, match="2 labels but 3"):
        external_scores([0, 1], [0, 1, 1])
