"""The exact distances umap-learn uses for fewer than 4,096 rows (cosine or euclidean), in
one compiled loop (:func:`visclust.reduce.umap_embedding`). Imported only when UMAP runs: it
needs numba and umap-learn."""

from __future__ import annotations

import numba
import numpy as np
from umap.distances import cosine, euclidean

from . import _jit


def _pairwise(X, use_euclidean):
    """``pairwise_distances(X, metric=umap.distances.cosine)`` (or ``euclidean``) as
    scikit-learn builds it for a callable metric: the upper triangle pair by pair, mirrored,
    then the diagonal; float32."""
    n = X.shape[0]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            d = np.float32(euclidean(X[i], X[j])) if use_euclidean else np.float32(cosine(X[i], X[j]))
            out[i, j] = d
            out[j, i] = d
    for i in range(n):
        out[i, i] = np.float32(euclidean(X[i], X[i])) if use_euclidean else np.float32(cosine(X[i], X[i]))
    return out


#: Kept in numba's disk cache (:mod:`visclust._jit`), as UMAP's functions are.
_pairwise_jit = numba.njit(_pairwise)
_jit.cache_on_disk(_pairwise_jit)


def pairwise_distances(X: np.ndarray, metric: str) -> np.ndarray:
    """The float32 distance matrix of ``X`` for ``metric`` ('cosine' or 'euclidean')."""
    return _pairwise_jit(X, metric == "euclidean")
