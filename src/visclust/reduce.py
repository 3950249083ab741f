"""Feature normalisation and dimensionality reduction: L2 -> PCA (optionally whitened) -> L2,
and UMAP for the clustering space.

:class:`Reducer` is fully described by a few arrays, so it is saved in the model file
without pickle. UMAP is only used to find clusters during ``fit``; new images are assigned
by the classifier in the PCA space, so UMAP never needs to be saved.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .exceptions import InputError, MissingDependencyError

_CHUNK = 65536
#: Principal directions whose variance is below this share of the largest are dropped.
_RANK_TOL = 1e-5


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), eps)


class Reducer(TransformerMixin, BaseEstimator):
    """L2-normalise, project on the top principal components, optionally whiten, L2 again.

    Parameters
    ----------
    n_components : int or None, default 64
        PCA dimensions; ``None`` keeps all features (no PCA).
    whiten : bool, default True
        Divide each component by its standard deviation, so that no few directions of high
        variance dominate distances (helps K-means on CNN features).
    normalize : bool, default True
        L2-normalise before PCA and after it (cosine geometry on both sides).

    Attributes
    ----------
    mean_ : ndarray (n_features,)
    components_ : ndarray (n_components_, n_features)
    scale_ : ndarray (n_components_,)
        Divisor per component (1 without whitening).
    explained_variance_ratio_ : ndarray (n_components_,)
    """

    def __init__(self, n_components: int | None = 64, whiten: bool = True, normalize: bool = True):
        self.n_components = n_components
        self.whiten = whiten
        self.normalize = normalize

    def fit(self, X, y=None):
        X = _check_matrix(X)
        self.n_features_in_ = X.shape[1]
        Xn = l2_normalize(X) if self.normalize else X
        if self.n_components is None:
            d = X.shape[1]
            self.mean_ = np.zeros(d, np.float32)
            self.components_ = np.eye(d, dtype=np.float32)
            self.scale_ = np.ones(d, np.float32)
            self.explained_variance_ratio_ = np.full(d, 1.0 / d, np.float32)
            return self
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise InputError(f"n_components must be a positive integer or None, got {self.n_components!r}")
        # Covariance accumulated in chunks: memory O(d^2) whatever the number of rows.
        mean = np.zeros(X.shape[1], np.float64)
        for s in range(0, len(Xn), _CHUNK):
            mean += Xn[s:s + _CHUNK].sum(0, dtype=np.float64)
        mean /= len(Xn)
        if len(Xn) < X.shape[1]:
            # Fewer rows than features (18 images of 3,072 pixels): the SVD of the centred
            # rows costs O(n^2 d) instead of the O(d^3) eigendecomposition of the covariance.
            c = Xn.astype(np.float64) - mean
            _, sv, vt = np.linalg.svd(c, full_matrices=False)
            evals, evecs = sv ** 2 / max(len(Xn) - 1, 1), vt.T
            total_var = float((c ** 2).sum() / max(len(Xn) - 1, 1))
        else:
            cov = np.zeros((X.shape[1], X.shape[1]), np.float64)
            for s in range(0, len(Xn), _CHUNK):
                c = Xn[s:s + _CHUNK].astype(np.float64) - mean
                cov += c.T @ c
            cov /= max(len(Xn) - 1, 1)
            evals, evecs = np.linalg.eigh(cov)
            total_var = float(np.trace(cov))
        order = np.argsort(evals)[::-1]
        k = int(min(self.n_components, X.shape[1], max(len(X) - 1, 1)))
        if self.whiten:
            # Whitening blows sampling noise up to unit variance: with few samples per
            # dimension the noise directions then drown the real ones. Keep >= 10 per dim.
            k = max(1, min(k, len(X) // 10))
        # Directions with (numerically) no variance, e.g. constant pixels, carry only rounding
        # noise; whitening would blow that noise up to unit variance, so they are dropped.
        k = max(1, min(k, int((evals[order] > _RANK_TOL * max(evals.max(), 1e-30)).sum())))
        evals, evecs = np.clip(evals[order][:k], 0, None), evecs[:, order][:, :k]
        # Sign convention (largest |loading| positive) makes fits reproducible across BLAS.
        signs = np.sign(evecs[np.abs(evecs).argmax(0), np.arange(k)])
        evecs *= np.where(signs == 0, 1, signs)
        self.mean_ = mean.astype(np.float32)
        self.components_ = evecs.T.astype(np.float32)
        std = np.sqrt(evals)
        self.scale_ = (np.maximum(std, 1e-8 * max(std.max(), 1e-12)) if self.whiten else np.ones(k)).astype(np.float32)
        self.explained_variance_ratio_ = (evals / total_var if total_var > 0 else np.zeros(k)).astype(np.float32)
        return self

    def transform(self, X):
        check_is_fitted(self, "components_")
        X = _check_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"features have {X.shape[1]} columns but the reducer was fitted on {self.n_features_in_}")
        out = np.empty((len(X), len(self.components_)), np.float32)
        for s in range(0, len(X), _CHUNK):
            c = l2_normalize(X[s:s + _CHUNK]) if self.normalize else np.asarray(X[s:s + _CHUNK], np.float32)
            out[s:s + _CHUNK] = ((c - self.mean_) @ self.components_.T) / self.scale_
        return l2_normalize(out) if self.normalize else out

    @property
    def n_components_(self) -> int:
        return len(self.components_)

    # -- persistence (arrays only, no pickle) -----------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "components": self.components_, "scale": self.scale_,
                "explained_variance_ratio": self.explained_variance_ratio_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> "Reducer":
        r = cls(**params)
        r.mean_ = arrays["mean"].astype(np.float32)
        r.components_ = arrays["components"].astype(np.float32)
        r.scale_ = arrays["scale"].astype(np.float32)
        r.explained_variance_ratio_ = arrays["explained_variance_ratio"].astype(np.float32)
        r.n_features_in_ = r.components_.shape[1]
        return r


def umap_embedding(X: np.ndarray, n_components: int = 10, n_neighbors: int = 15,
                   random_state: int | None = 0, min_dist: float = 0.0) -> np.ndarray:
    """UMAP embedding of ``X`` for clustering (cosine metric, ``min_dist=0`` packs clusters)."""
    try:
        import umap
    except ImportError as e:
        raise MissingDependencyError("UMAP needs umap-learn: pip install umap-learn") from e
    import warnings

    n_neighbors = int(min(n_neighbors, max(2, len(X) - 1)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist,
                            metric="cosine", random_state=random_state, low_memory=True)
        return reducer.fit_transform(np.asarray(X, np.float32)).astype(np.float32)


def _check_matrix(X) -> np.ndarray:
    if not hasattr(X, "shape"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise InputError(f"expected a feature matrix (n_samples, n_features), got shape {X.shape}")
    if len(X) == 0:
        raise InputError("the feature matrix has no rows")
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"features must be numbers, got dtype {X.dtype}")
    if X.size <= 10_000_000 and not np.isfinite(X).all():
        raise InputError("features contain NaN or infinity; check the images or the backbone")
    return X
