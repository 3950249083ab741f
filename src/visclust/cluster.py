"""Finding groups in the reduced features: K-means, Gaussian mixture, Ward, HDBSCAN,
spectral; and choosing the number of clusters without labels.

Every function takes a feature matrix ``(n_samples, n_features)`` and returns integer
labels ``0..k-1`` (HDBSCAN may also return -1 for noise).
"""

from __future__ import annotations

import warnings

import numpy as np

from .exceptions import InputError

METHODS = ("kmeans", "gmm", "agglomerative", "hdbscan", "spectral")
#: How the Gaussian mixture's EM starts (scikit-learn's ``init_params``): from a K-means
#: solution. From k-means++ seeds alone it split three well-separated blobs wrongly on 14 of
#: 20 random subsets of a whitened PCA space (docs/benchmarks.md, "The Gaussian mixture
#: started from K-means").
GMM_INIT = "kmeans"
#: ``'auto'`` is not an algorithm: it asks :class:`visclust.FeatureClusterer` to choose the
#: space and algorithm by the label-free criterion of :mod:`visclust.select`.
AUTO = "auto"
#: K-means problems with at least this many ``n_samples * n_clusters`` use visclust's chunked
#: PyTorch K-means (:mod:`visclust.kmeans`) instead of scikit-learn's: K = 1,000 on 100,000
#: vectors then takes minutes, not tens of minutes, on two CPU cores.
LARGE_KMEANS = 5_000_000
#: Above this many samples, Ward and spectral clustering are fitted on a random subsample and
#: the rest are assigned to the nearest cluster mean (both need O(n^2) memory or time).
SUBSAMPLE = {"agglomerative": 15000, "spectral": 5000}


def check_method(method: str, allow_auto: bool = False) -> str:
    """Return ``method`` if it names an algorithm (or ``'auto'`` where allowed), else raise."""
    names = METHODS + ((AUTO,) if allow_auto else ())
    if method not in names:
        import difflib

        close = difflib.get_close_matches(str(method), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"unknown clustering method '{method}'{hint}; choose one of {', '.join(names)}")
    return method


def cluster_features(X: np.ndarray, n_clusters: int, method: str = "kmeans", *, random_state: int | None = 0,
                     n_init: int = 10) -> np.ndarray:
    """Cluster ``X`` into ``n_clusters`` groups with ``method``.

    Returns
    -------
    labels : ndarray of int (n_samples,)
        Values ``0..n_clusters-1``; for ``'hdbscan'`` the number of clusters is found by the
        algorithm and noise points get -1.
    """
    check_method(method)
    X = np.asarray(X, dtype=np.float32)
    if method != "hdbscan" and len(X) < n_clusters:
        raise InputError(f"{len(X)} samples cannot form {n_clusters} clusters; use fewer clusters or more images")
    if method == "kmeans":
        return kmeans_labels(X, n_clusters, random_state=random_state, n_init=n_init)
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        cov = "full" if X.shape[1] <= 32 else "diag"
        gm = GaussianMixture(n_clusters, covariance_type=cov, n_init=max(1, n_init // 3),
                             random_state=random_state, reg_covar=1e-5, init_params=GMM_INIT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gm.fit_predict(X).astype(np.int64)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        min_size = max(5, len(X) // (4 * max(n_clusters, 1)))
        labels = HDBSCAN(min_cluster_size=min_size, min_samples=min(10, min_size), copy=True).fit_predict(X)
        return _compact(labels)
    rng = np.random.default_rng(random_state)
    limit = SUBSAMPLE[method]
    sample = np.sort(rng.choice(len(X), limit, replace=False)) if len(X) > limit else np.arange(len(X))
    Xs = X[sample]
    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        sub = AgglomerativeClustering(n_clusters, linkage="ward").fit_predict(Xs)
    else:
        from sklearn.cluster import SpectralClustering

        sub = SpectralClustering(n_clusters, affinity="nearest_neighbors", n_neighbors=min(15, len(Xs) - 1),
                                 random_state=random_state, assign_labels="cluster_qr").fit_predict(Xs)
    if len(sample) == len(X):
        return sub.astype(np.int64)
    centers = np.stack([Xs[sub == c].mean(0) for c in range(n_clusters)])
    return nearest_center(X, centers)


def kmeans_labels(X, n_clusters, *, random_state=0, n_init=10) -> np.ndarray:
    """K-means (k-means++ seeding, best of ``n_init`` runs by inertia).

    Large problems (``n_samples * n_clusters >= LARGE_KMEANS``) run on visclust's chunked
    PyTorch K-means when it is available, with at most 3 restarts; others on scikit-learn's.
    """
    if len(X) * n_clusters >= LARGE_KMEANS:
        try:
            from .kmeans import KMeans as FastKMeans
        except ImportError:  # torch missing: scikit-learn is slower but gives the same answer
            FastKMeans = None
        if FastKMeans is not None:
            km = FastKMeans(int(n_clusters), n_init=int(min(n_init, 3)), random_state=random_state, device="cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(km.fit(X).labels_, np.int64)
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Fewer distinct points than clusters (duplicate images): the labels say it (fewer
        # clusters), and the selection runs K-means hundreds of times, each would warn.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters, n_init=n_init, random_state=random_state).fit_predict(X).astype(np.int64)


#: Rows per block of an ``(n_rows, n_cols)`` matrix that is computed a block at a time
#: (distances to every centre, decision values of every class): about 4 MB, so every pass
#: over a block stays in cache and no block is a fresh large allocation. Whole matrices cost
#: more than their arithmetic at many clusters: on the 2-core VM of docs/scaling.md a fresh
#: 100,000 x 1,000 float32 array took 1-3 s of system time to fault in, its product 0.09 s;
#: the SVM's loss and gradient at K = 1,000 took 97 ms per evaluation in blocks of 1,024
#: rows against 136 ms in blocks of 8,192 (docs/scaling.md, "The whole fit at K = 1,000").
BLOCK_BYTES = 4 << 20


def block_rows(n_cols: int, itemsize: int = 4, lo: int = 256, hi: int = 8192) -> int:
    """Rows of an ``n_cols``-wide block of about :data:`BLOCK_BYTES` (``lo`` to ``hi``)."""
    return int(min(hi, max(lo, BLOCK_BYTES // (itemsize * max(1, int(n_cols))))))


def cluster_means(X: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Mean of each cluster's members ``(n_clusters, n_features)`` (zeros for an empty one)."""
    import torch

    X = np.asarray(X, np.float32)
    labels = np.asarray(labels)
    rows = np.flatnonzero(labels >= 0)
    sums = torch.zeros((n_clusters, X.shape[1]), dtype=torch.float64)
    step = block_rows(X.shape[1], itemsize=8, hi=65536)
    for s in range(0, len(rows), step):  # float64 sums, converted a block at a time
        r = rows[s:s + step]
        sums.index_add_(0, torch.from_numpy(labels[r].astype(np.int64)), torch.from_numpy(X[r]).double())
    counts = np.bincount(labels[rows], minlength=n_clusters).astype(np.float64)
    return (sums.numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``centers`` (Euclidean) for each row of ``X``, a block of
    :func:`block_rows` rows at a time (float32; the first on a tie)."""
    import torch

    C = torch.from_numpy(np.ascontiguousarray(centers, np.float32))
    c_sq = (C * C).sum(1)
    step = block_rows(len(C))
    out = np.empty(len(X), np.int64)
    buf = torch.empty((min(step, len(X)), len(C)))
    for s in range(0, len(X), step):
        x = torch.from_numpy(np.ascontiguousarray(X[s:s + step], np.float32))
        # ||c||^2 - 2 x.c: ||x||^2 is the same for every centre of a row
        out[s:s + len(x)] = torch.addmm(c_sq, x, C.T, alpha=-2, out=buf[:len(x)]).argmin(1).numpy()
    return out


def nearest_distance(X: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each row of ``X`` to its nearest row of ``reference``, a block
    of :func:`block_rows` rows at a time. ``exclude_self``: ``X`` is ``reference`` and each
    row's own zero distance does not count (its nearest *other* row)."""
    import torch

    R = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    r_sq = (R * R).sum(1)
    step = block_rows(len(R))
    out = np.empty(len(X), np.float32)
    if len(R) < (2 if exclude_self else 1):
        out[:] = np.inf
        return out
    for s in range(0, len(X), step):
        x = torch.from_numpy(np.ascontiguousarray(X[s:s + step], np.float32))
        d = torch.addmm(r_sq, x, R.T, alpha=-2)  # ||r||^2 - 2 x.r
        if exclude_self:
            d[torch.arange(len(x)), torch.arange(s, s + len(x))] = float("inf")
        best = d.min(1).values + (x * x).sum(1)
        out[s:s + len(x)] = best.clamp_min(0).sqrt().numpy()
    return out


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 0..m-1 in order of first appearance, keeping -1."""
    labels = np.asarray(labels, np.int64)
    out = np.full_like(labels, -1)
    uniq = [u for u in dict.fromkeys(labels.tolist()) if u >= 0]
    for new, old in enumerate(uniq):
        out[labels == old] = new
    return out


def select_n_clusters(X: np.ndarray, k_range=(2, 30), method: str = "kmeans", *, random_state: int | None = 0,
                      sample_size: int = 5000, metric: str = "cosine") -> tuple[int, dict[int, float]]:
    """Choose the number of clusters by the mean silhouette, a label-free criterion.

    Each candidate ``k`` is clustered with ``method`` on a random subsample of at most
    ``sample_size`` points and scored by its silhouette (``metric``: cosine in the L2-normalised
    PCA space, euclidean in a UMAP embedding); the best ``k`` wins.

    This is the simple rule, kept for users who want it and as the comparison in
    docs/quality.md; ``--clusters auto`` (:class:`visclust.FeatureClusterer`) does not use it
    but :func:`visclust.select.choose_n_clusters` (stability against a structureless
    reference), because the silhouette favours a dominant coarse split (CIFAR-10: K = 2).

    Returns
    -------
    k : int
    scores : dict {k: silhouette}
    """
    from sklearn.metrics import silhouette_score

    lo, hi = int(k_range[0]), int(k_range[1])
    if lo < 2 or hi < lo:
        raise InputError(f"k range must satisfy 2 <= min <= max, got {k_range}")
    X = np.asarray(X, np.float32)
    rng = np.random.default_rng(random_state)
    idx = rng.choice(len(X), sample_size, replace=False) if len(X) > sample_size else np.arange(len(X))
    Xs = X[idx]
    hi = min(hi, len(Xs) - 1)
    if hi < lo:
        raise InputError(f"{len(X)} sample{'s are' if len(X) != 1 else ' is'} too few to choose among "
                         f"{k_range[0]}..{k_range[1]} clusters (at least {lo + 1} are needed)")
    scores = {}
    for k in range(lo, hi + 1):
        labels = cluster_features(Xs, k, "kmeans" if method == "hdbscan" else method, random_state=random_state, n_init=3)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(Xs, labels, metric=metric))
    best = max(scores, key=scores.get)
    return best, scores
