"""Feature normalisation and dimensionality reduction: L2 -> PCA (optionally whitened) -> L2,
and UMAP for the clustering space.

:class:`Reducer` is fully described by a few arrays, so it is saved in the model file
without pickle. UMAP is only used to find clusters during ``fit``; new images are assigned
by the classifier in the PCA space, so UMAP never needs to be saved.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _jit
from .exceptions import InputError, MissingDependencyError

_CHUNK = 65536
#: Principal directions whose variance is below this share of the largest are dropped.
_RANK_TOL = 1e-5


#: Below this float32 norm a row's squares have lost digits (or all of them) to underflow.
_TINY_NORM = 1e-15


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``X`` divided by their length, as float32 (rows of zeros stay zero). Rows whose
    squares leave float32's range (values beyond about 1e19, or below about 1e-19) are
    scaled by their largest value first, in float64: their norm overflowed to infinity (the
    row became zeros) or underflowed to zero (the row stayed tiny)."""
    X = np.asarray(X)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # the rows that need it are redone below
        Xf = X if X.dtype == np.float32 else X.astype(np.float32)
        n = np.linalg.norm(Xf, axis=1, keepdims=True)
        out = Xf / np.maximum(n, eps)
    odd = ~np.isfinite(n[:, 0]) | (n[:, 0] < _TINY_NORM)
    if odd.any():
        Y = np.asarray(X[odd], np.float64)
        m = np.abs(Y).max(axis=1, keepdims=True)
        Y = np.divide(Y, m, out=np.zeros_like(Y), where=m > 0)
        out[odd] = np.divide(Y, np.linalg.norm(Y, axis=1, keepdims=True), out=np.zeros_like(Y), where=m > 0)
    return out


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
            # dimension the noise directions then drown the real ones. Keep >= 10 per dim, but
            # at least 2 dims: the final L2 would leave one dim nothing but its sign. Samples
            # are distinct images: 40 images ten times over are 40 samples, not 400.
            k = min(k, max(2, distinct_rows(X, enough=10 * k) // 10))
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
            out[s:s + _CHUNK] = (self._centred(X[s:s + _CHUNK]) @ self.components_.T) / self.scale_
        return l2_normalize(out) if self.normalize else out

    def _centred(self, rows) -> np.ndarray:
        """``rows`` L2-normalised (when ``normalize``) and centred: what the components project."""
        return (l2_normalize(rows) if self.normalize else np.asarray(rows, np.float32)) - self.mean_

    def residual(self, X) -> np.ndarray:
        """Distance of each (L2-normalised, centred) row from the principal subspace: the part
        of it the projection throws away. Large for rows unlike those the reducer was fitted on
        (a digit given to a model of photos), which the projection itself cannot show."""
        check_is_fitted(self, "components_")
        X = _check_matrix(X)
        out = np.empty(len(X), np.float32)
        for s in range(0, len(X), _CHUNK):
            c = self._centred(X[s:s + _CHUNK])
            out[s:s + _CHUNK] = np.linalg.norm(c - (c @ self.components_.T) @ self.components_, axis=1)
        return out

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


def distinct_rows(X: np.ndarray, enough: int | None = None) -> int:
    """How many different rows ``X`` has (identical images give identical rows), or, when
    ``enough`` is given, possibly only some number at least ``enough``: then evenly spaced
    rows are counted first, and all of them only if those are too few (100,000 x 1,280 rows
    cost 0.9 s to count whole)."""
    X = np.ascontiguousarray(X)
    if X.shape[1] == 0:  # rows without columns are all alike
        return min(len(X), 1)
    if len(X) < 2:
        return len(X)
    rows = X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()  # one bytes value per row
    if enough is not None and len(rows) > 4 * enough:
        seen = len(np.unique(rows[::len(rows) // (4 * enough)]))
        if seen >= enough:
            return seen
    return len(np.unique(rows))


#: umap-learn finds the neighbours of fewer rows than this exactly, from all pairwise
#: distances, which it computes through scikit-learn with its numba metric called once per
#: pair from Python (8 million calls for 4,000 rows: 12 of the 16 s one embedding took on the
#: 2-core machine of docs/quality.md). :func:`umap_embedding` computes the same distances
#: in one compiled loop and hands UMAP the same neighbours, so the embedding is unchanged.
_UMAP_EXACT_ROWS = 4096

#: The metrics :func:`umap_embedding` takes: cosine for L2-normalised features, euclidean for
#: coordinates whose length counts (``FeatureClusterer(normalize=False)``).
UMAP_METRICS = ("cosine", "euclidean")


def _exact_neighbours(X: np.ndarray, n_neighbors: int, metric: str):
    """The neighbours umap-learn's exact path finds for fewer than 4,096 rows (``metric``
    'cosine' or 'euclidean'): the same float32 distance matrix (:mod:`visclust._umap_knn`),
    distances at or beyond its disconnection distance set to infinity, then its own
    ``fast_knn_indices``. Returns ``(indices int32, distances float32)``."""
    from umap.umap_ import DISCONNECTION_DISTANCES
    from umap.utils import fast_knn_indices

    from ._umap_knn import pairwise_distances

    dmat = pairwise_distances(np.ascontiguousarray(X, np.float32), metric)
    dmat[dmat >= DISCONNECTION_DISTANCES.get(metric, np.inf)] = np.inf
    idx = fast_knn_indices(dmat, n_neighbors)
    dist = dmat[np.arange(len(dmat))[:, None], idx].copy()
    idx[dist == np.inf] = -1
    return idx, dist


_JIT_CACHE_ENABLED = False


def _cache_umap_jit() -> int:
    """Let numba keep umap-learn's and pynndescent's compiled functions on disk
    (:mod:`visclust._jit`).

    umap-learn compiles most of its numba functions without ``cache=True``, so every new
    process (each ``visclust fit``, each UMAP child process) compiled them again: the first
    embedding of 10,000 x 64 rows took 41 s in a fresh process and 10.6 s after it. With
    numba's cache switched on for every module-level function of those packages that has none,
    later processes load the machine code instead (21.6 s for that first embedding; the
    rest is pynndescent's functions that take another compiled function as an argument,
    which numba cannot cache). The machine code is the same, so the embeddings are identical
    (tested). The cache lives where numba puts it (``__pycache__`` beside the package, else
    numba's per-user folder; ``NUMBA_CACHE_DIR`` moves it) and is invalidated when a package's
    source changes. numba's cache files are pickles that numba writes and reads itself, kept
    where Python keeps its own bytecode cache (the same trust as ``.pyc`` files);
    ``VISCLUST_NUMBA_CACHE=0`` leaves them off. Returns how many functions it switched on (0
    on later calls, when switched off, or when numba's internals are not as expected: then
    nothing changes)."""
    global _JIT_CACHE_ENABLED
    if _JIT_CACHE_ENABLED:
        return 0
    _JIT_CACHE_ENABLED = True
    if not _jit.cache_enabled():
        return 0
    prefixes = ("umap.", "pynndescent.")
    return sum(_jit.cache_on_disk(f) for name, module in list(sys.modules.items())
               if module is not None and name.startswith(prefixes) for f in list(vars(module).values()))


def heldout_residuals(X: np.ndarray, n_components: int, normalize: bool = True, n_folds: int = 5,
                      random_state: int | None = 0) -> np.ndarray:
    """Each row's distance from the top ``n_components`` principal subspace of the *other*
    rows (``n_folds`` folds): what :meth:`Reducer.residual` gives new rows like these, which lie
    farther from a subspace than the rows it was fitted on. Randomized SVD per fold (Halko et
    al.; scikit-learn's ``randomized_svd``), so thousands of features cost seconds, not the
    minutes of exact ones (the novelty step of a fit on 6,000 rows of 4,352 features, 5,000 kept,
    each fold's PCA on 4,000: 98.6 s exact, 3.4 s randomized; the 99.5% quantile 0.3126 against
    0.3152)."""
    from sklearn.utils.extmath import randomized_svd

    C = l2_normalize(X) if normalize else np.asarray(X, np.float32)
    fold = np.random.default_rng(random_state).permutation(len(C)) % n_folds
    out = np.empty(len(C), np.float32)
    for f in range(n_folds):
        A = C[fold != f]
        mean = A.mean(0)
        k = int(min(n_components, len(A) - 1, A.shape[1]))
        _, _, vt = randomized_svd(A - mean, k, n_iter=4, random_state=random_state)
        c = C[fold == f] - mean
        out[fold == f] = np.linalg.norm(c - (c @ vt.T) @ vt, axis=1)
    return out


def umap_embedding(X: np.ndarray, n_components: int = 10, n_neighbors: int = 15,
                   random_state: int | None = 0, min_dist: float = 0.0, metric: str = "cosine") -> np.ndarray:
    """UMAP embedding of ``X`` for clustering (``min_dist=0`` packs clusters). ``metric`` is
    ``'cosine'`` (L2-normalised features: the direction is what counts) or ``'euclidean'``
    (coordinates whose length counts too: ``FeatureClusterer(normalize=False)``).
    Below 4,096 rows the exact neighbours are computed here, in compiled code, and given to
    UMAP (the same neighbours and the same embedding as UMAP's own exact path, without its
    per-pair Python calls). At most ``len(X) - 2`` components: UMAP starts from a spectral
    layout of ``n_components + 1`` eigenvectors, which needs more rows than that (10
    components on 8 images raised SciPy's TypeError); fewer than 3 rows is an error.

    Identical rows (copies of one image) are embedded once and every copy gets that point: as
    rows of their own they fill each other's neighbour lists, so ten copies of each of 40
    images made 40 islands that the number of clusters was then counted on (11 groups chosen
    in four blobs, 4 without the copies), and UMAP scattered copies at random. With at least 3
    distinct rows; rows without copies are embedded exactly as before."""
    X = np.asarray(X)
    if len(X) >= 3:
        _, first, inverse = np.unique(np.ascontiguousarray(X), axis=0, return_index=True, return_inverse=True)
        if 3 <= len(first) < len(X):
            order = np.argsort(first)  # the distinct rows in the order they first appear
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            E = umap_embedding(X[first[order]], n_components, n_neighbors, random_state, min_dist, metric)
            return E[rank[inverse.ravel()]]
    if len(X) < 3:
        raise InputError(f"UMAP needs at least 3 images (rows), got {len(X)}; use the PCA space (space='pca', --space pca)")
    if metric not in UMAP_METRICS:
        raise InputError(f"UMAP's metric must be one of {', '.join(UMAP_METRICS)}, got {metric!r}")
    n_components = int(min(n_components, len(X) - 2))
    _jit.tolerate_cache_errors()  # before umap-learn loads its own cached functions
    try:
        import umap
    except ImportError as e:
        raise MissingDependencyError("UMAP needs umap-learn: pip install umap-learn") from e
    import warnings

    _cache_umap_jit()
    X = np.ascontiguousarray(X, np.float32)
    n_neighbors = int(min(n_neighbors, max(2, len(X) - 1)))
    knn = (None, None, None)  # UMAP finds the neighbours
    if len(X) < _UMAP_EXACT_ROWS:
        knn = _exact_neighbours(X, n_neighbors, metric) + (None,)  # no search index: only fit_transform is used
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # only fit_transform is used
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function.*")  # see _cache_umap_jit
        reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist,
                            metric=metric, random_state=random_state, low_memory=True,
                            precomputed_knn=knn)
        return reducer.fit_transform(X).astype(np.float32)


#: From this many rows on, :func:`umap_embeddings` computes the embeddings of seeds after
#: the first in child processes, beside the one this process computes. UMAP with a seed runs
#: on one thread and holds the GIL, so only processes overlap; each child pays its own import
#: and the compilation of what numba cannot cache (see :func:`_cache_umap_jit`). Measured on
#: the 2-core machine of docs/quality.md, 3 seeds: 30,000 x 64 70.6 s one after another,
#: 58.5 s beside two children; the default fit's embeddings of 100,000 rows 242 s, 180 s with
#: two children, 169.5 s with one (one per spare CPU, the rule now). With numba's cache on:
#: 10,000 x 64 32.1 s one after another, 24.4-25.6 s beside one child; 5,000 x 64 15.5 s
#: against 18.3-18.5 s (so not below 10,000). The embeddings are identical either way.
UMAP_PARALLEL_ROWS = 10_000

#: A child's work waits this long beyond twice the time one embedding took here, once this
#: process has finished its own; a child still running then (hung, or starved of CPU) is
#: killed and its embedding computed here, so the fit cannot wait forever.
UMAP_CHILD_GRACE_S = 120.0

#: First lines of every child: it dies with the process that started it (Linux's parent-death
#: signal; elsewhere it exits when it finds itself orphaned before starting), so a fit killed
#: with ``kill -9`` leaves no UMAP running behind it.
_UMAP_CHILD_PREAMBLE = ("import ctypes, os, signal, sys\n"
                        "try:\n"
                        "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
                        "except (AttributeError, OSError):\n"
                        "    pass\n"
                        "if os.getppid() != int(sys.argv[4]):\n"
                        "    sys.exit('the process that started this one has gone')\n")
_UMAP_CHILD = ("import json, sys\n"
               "import numpy as np\n"
               "from visclust.reduce import umap_embedding\n"
               "np.save(sys.argv[2], umap_embedding(np.load(sys.argv[1]), **json.loads(sys.argv[3])))\n")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def umap_embeddings(X: np.ndarray, seeds, n_components: int = 10, n_neighbors: int = 15,
                    min_dist: float = 0.0, metric: str = "cosine") -> list[np.ndarray]:
    """``[umap_embedding(X, ..., random_state=s) for s in seeds]``, computed side by side.

    With at least :data:`UMAP_PARALLEL_ROWS` rows, more than one seed and more than one CPU,
    seeds after the first run in child processes of the same Python, one per CPU beyond this
    process's (the rest here, after the first), reading ``X`` from and writing their
    embedding to a temporary folder (``.npy``, no pickle). A child that fails, or that is
    still running :data:`UMAP_CHILD_GRACE_S` plus twice one embedding's time after this
    process finished its own, is redone here, with a warning that says why; nothing is lost,
    and nothing waits forever. Children die with this process. The results equal the
    sequential ones (checked in the tests): each embedding is seeded and single-threaded
    wherever it runs.
    """
    seeds = [int(s) for s in seeds]
    X = np.ascontiguousarray(X, np.float32)
    params = dict(n_components=int(n_components), n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                  metric=str(metric))
    n_children = min(len(seeds) - 1, _cpu_count() - 1) if len(X) >= UMAP_PARALLEL_ROWS else 0
    if n_children <= 0:
        return [umap_embedding(X, random_state=s, **params) for s in seeds]
    import subprocess
    import warnings

    from .io import work_folder

    # the children import modules from where this process does, in the same order
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out: dict[int, np.ndarray] = {}
    with work_folder("visclust-umap-") as tmp:  # a fit killed here leaves it for the next one to delete
        data = os.path.join(tmp, "X.npy")
        np.save(data, X)
        children = {}
        try:
            for i in range(1, 1 + n_children):
                dest = os.path.join(tmp, f"E{i}.npy")
                with open(os.path.join(tmp, f"E{i}.log"), "wb") as log:  # a file: a full pipe would stall the child
                    children[i] = (dest, subprocess.Popen(
                        [sys.executable, "-c", _UMAP_CHILD_PREAMBLE + _UMAP_CHILD, data, dest,
                         json.dumps(dict(params, random_state=seeds[i])), str(os.getpid())],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env))
            here = [0] + list(range(1 + n_children, len(seeds)))
            t0 = time.monotonic()
            for i in here:
                out[i] = umap_embedding(X, random_state=seeds[i], **params)
            deadline = time.monotonic() + 2 * (time.monotonic() - t0) / len(here) + UMAP_CHILD_GRACE_S
            for i, (dest, proc) in children.items():
                try:
                    try:
                        proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        raise RuntimeError(f"still running {UMAP_CHILD_GRACE_S:g} s after twice the time this "
                                           "process took for one embedding; killed") from None
                    if proc.returncode != 0:
                        with open(os.path.join(tmp, f"E{i}.log"), "rb") as f:
                            err = f.read().decode(errors="replace").strip().splitlines()
                        raise RuntimeError(err[-1] if err else f"exit status {proc.returncode}")
                    out[i] = np.load(dest)
                    # fewer components than asked only when there are few distinct rows (see umap_embedding)
                    if out[i].ndim != 2 or len(out[i]) != len(X) or not 1 <= out[i].shape[1] <= params["n_components"]:
                        raise RuntimeError(f"an embedding of shape {out[i].shape}")
                except (OSError, ValueError, RuntimeError) as e:
                    warnings.warn(f"a UMAP child process failed ({e}); computing that embedding here instead",
                                  RuntimeWarning, stacklevel=2)
                    out[i] = umap_embedding(X, random_state=seeds[i], **params)
        finally:
            for _, proc in children.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return [out[i] for i in range(len(seeds))]


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
