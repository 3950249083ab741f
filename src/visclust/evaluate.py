"""Scores of a clustering: against labels (Hungarian accuracy, NMI, ARI, purity) and
without them (silhouette, Davies-Bouldin, Calinski-Harabasz)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .exceptions import InputError


def _encode(values) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    return uniq, inv.ravel()


def contingency(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``(n_classes, n_clusters)`` with the class and cluster values of rows/columns."""
    classes, t = _encode(y_true)
    clusters, p = _encode(y_pred)
    m = np.zeros((len(classes), len(clusters)), np.int64)
    np.add.at(m, (t, p), 1)
    return m, classes, clusters


def match_clusters(y_true, y_pred) -> dict:
    """The one-to-one cluster -> class matching that maximises agreement (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    m, classes, clusters = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-m)
    return {clusters[c]: classes[r] for r, c in zip(rows, cols)}


def hungarian_accuracy(y_true, y_pred) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (ACC)."""
    from scipy.optimize import linear_sum_assignment

    _check_pair(y_true, y_pred)
    m, _, _ = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-m)
    return float(m[rows, cols].sum() / m.sum())


def purity(y_true, y_pred) -> float:
    """Share of images whose cluster's majority class is their class."""
    _check_pair(y_true, y_pred)
    m, _, _ = contingency(y_true, y_pred)
    return float(m.max(0).sum() / m.sum())


def external_scores(y_true, y_pred) -> dict:
    """ACC, NMI, ARI and purity of ``y_pred`` against ``y_true``, plus ``n``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    _check_pair(y_true, y_pred)
    t = _encode(y_true)[1]
    p = _encode(y_pred)[1]
    return {
        "acc": hungarian_accuracy(t, p),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
        "purity": purity(t, p),
        "n": int(len(t)),
        "n_classes": int(t.max() + 1) if len(t) else 0,
        "n_clusters": int(p.max() + 1) if len(p) else 0,
    }


def internal_scores(X: np.ndarray, labels: np.ndarray, sample_size: int = 10000, random_state: int = 0) -> dict:
    """Label-free scores in the feature space ``X``: silhouette (cosine, on a sample of at
    most ``sample_size``), Davies-Bouldin (lower is better), Calinski-Harabasz."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    X = np.asarray(X, np.float32)
    labels = np.asarray(labels)
    ok = labels >= 0
    X, labels = X[ok], labels[ok]
    out = {"n": int(len(labels)), "n_clusters": int(len(np.unique(labels)))}
    if out["n_clusters"] < 2 or out["n_clusters"] >= len(labels):
        return {**out, "silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    rng = np.random.default_rng(random_state)
    idx = rng.choice(len(X), sample_size, replace=False) if len(X) > sample_size else np.arange(len(X))
    sil = silhouette_score(X[idx], labels[idx], metric="cosine") if len(np.unique(labels[idx])) > 1 else None
    out.update(
        silhouette=None if sil is None else float(sil),
        davies_bouldin=float(davies_bouldin_score(X, labels)),
        calinski_harabasz=float(calinski_harabasz_score(X, labels)),
    )
    return out


def _check_pair(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise InputError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise InputError("nothing to evaluate: no rows")
