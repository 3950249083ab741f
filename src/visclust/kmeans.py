"""K-means that scales: chunked PyTorch Lloyd iterations, and streaming mini-batch K-means
for feature matrices stored as ``.npy`` memmaps larger than RAM.

Squared distances are ``||x||^2 - 2 x.c + ||c||^2`` computed by one matrix product per chunk
of rows, so the ``(rows, n_clusters)`` block, not the ``(n_samples, n_clusters)`` matrix, is
what lives in memory. The same code runs on CPU and CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import numbers
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils import check_random_state

from .exceptions import InputError, NotFittedError

_BLOCK_BYTES = 256 * 2**20  # bound on one distance block / one chunk of rows
_PIECE_BYTES = 16 * 2**20  # on CPU, chunks are cut to this size per thread
_SUB_BYTES = 2**20  # on CPU, a thread's piece is computed in blocks of about this size (measured: docs/scaling.md (h8))
_SAMPLE_ROWS = 50_000  # the init sample has at most max(10 * n_clusters, this) rows
_RAM_FRACTION = 0.25  # a memmap bigger than this share of available RAM is streamed
_SMALL_WORK = 2**25  # n * d * k below this: one thread (fork/join costs more than it saves)
_WINDOW = 2**20  # Hamerly: rows whose bounds are tested at once (bounds temporaries stay ~13 MB)
_DENSE = 0.6  # Hamerly: above this share of rows to recompute in a window, recompute the whole window
_U = 2.0**-24  # unit roundoff of float32
_PARTIAL_FIXED = 32  # Hamerly: a pass against m moved centers costs about (m + this) / k of a full pass (measured)
_TIGHTEN = 80  # Hamerly: computing one row's distance to its own center costs about this many centers' share of a
_ROW_FIXED = 16  # full recompute, whose per-row cost is about (k + this) centers (measured at d = 512, k = 100)
_SPARSE_ROW = 2  # Hamerly: a gathered row's recompute costs about this many times a row of a full pass
_PROBE = 8  # Hamerly: when tightening does not pay, every this-th failing row is still tightened, to re-estimate


class _NotFittedError(NotFittedError, _SklearnNotFittedError):
    """visclust's NotFittedError that scikit-learn's tools (``check_is_fitted`` users,
    ``check_estimator``) also recognise."""


def cpu_has_bf16_units() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (Intel AMX or AVX512-BF16),
    where oneDNN's bf16 product beats float32 (with AMX: 6x, measured in docs/scaling.md)."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if getattr(cpu, name)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def _is_int(v, low):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


_PARAMS = {  # name: (check, what is expected) -- run at the top of fit
    "n_clusters": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "n_init": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "max_iter": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "tol": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "init": (lambda v: (v in ("k-means++", "random")) if isinstance(v, str) else hasattr(v, "__len__"),
             "'k-means++', 'random' or an array of shape (n_clusters, n_features)"),
    "batch_size": (lambda v: v is None or _is_int(v, 1), "None (automatic) or an integer >= 1"),
    "mini_batch": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "algorithm": (lambda v: isinstance(v, str) and v in ("auto", "hamerly", "lloyd"), "'auto', 'hamerly' or 'lloyd'"),
    "device": (lambda v: v is None or isinstance(v, (str, torch.device)), "None, 'cpu' or 'cuda'"),
    "dtype": (lambda v: v in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
    "random_state": (lambda v: v is None or _is_int(v, 0) or isinstance(v, np.random.RandomState),
                     "None, an integer >= 0 or a numpy RandomState"),
}


def _check_array(X):
    """Return ``X`` as a 2-D numeric ndarray without copying memmaps (they may exceed RAM)."""
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise InputError("sparse input is not supported by KMeans; convert it with X.toarray() first")
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"X must be a numeric array of shape (n_samples, n_features): {e}") from e
    if np.iscomplexobj(X):
        raise InputError("Complex data not supported by KMeans; pass X.real or np.abs(X)")
    if X.dtype.kind not in "fiub":
        try:
            X = X.astype(np.float32)
        except ValueError as e:  # a TypeError (dicts, None) propagates, as in scikit-learn
            raise InputError(f"X must be numeric, got dtype {X.dtype}: {e}") from e
    if X.ndim != 2:
        raise InputError(f"Expected 2D array of shape (n_samples, n_features), got {X.ndim}D array instead. "
                         "Reshape your data either using array.reshape(-1, 1) if your data has a single "
                         "feature or array.reshape(1, -1) if it contains a single sample.")
    if X.shape[1] == 0:
        raise InputError(f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    return X


def _release_pages(X):
    """Drop our mapping of pages already read from a memmap, so the resident set stays one
    chunk big; the kernel page cache keeps the data (MADV_DONTNEED on a file mapping)."""
    mm = getattr(X, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _to_tensor(a, device):
    if isinstance(a, torch.Tensor):
        return a.to(device)
    a = np.ascontiguousarray(a, dtype=np.float32)
    with warnings.catch_warnings():  # read-only arrays are fine: nothing writes into them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def _one_thread_if_small(method):
    """Run ``method`` single-threaded when ``n_samples * n_features * n_clusters`` is small:
    tiny products gain nothing from threads, and on a busy machine every OpenMP fork/join
    can cost milliseconds. The thread count is restored on exit."""
    @functools.wraps(method)
    def wrapper(self, X, *args, **kwargs):
        k = self.n_clusters if _is_int(self.n_clusters, 1) else 1
        shape = getattr(X, "shape", None)  # no np.shape: it would convert lists (and array-likes)
        small = shape is not None and len(shape) == 2 and int(shape[0]) * int(shape[1]) * k < _SMALL_WORK
        with _num_threads(1) if small else contextlib.nullcontext():
            return method(self, X, *args, **kwargs)
    return wrapper


_POOLS = {}  # thread count -> executor, kept: starting threads on every pass costs more than a small pass
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(workers):
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="visclust-kmeans")
    return _POOLS[workers]


@contextlib.contextmanager
def _num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _centers_by_rows(n_rows, k):
    """On the CPU, whether a block of ``n_rows`` rows against ``k`` centers is computed as
    ``(k, n_rows)`` (centers by rows, the minimum taken across rows) rather than
    ``(n_rows, k)``. Measured on one thread (docs/scaling.md (h12), k 10-1,000, d 64-768,
    blocks of 128-2,048 rows): 1.2-2.4x faster for k = 10 at every size; 0.86-1.21x (about
    level, faster at the benchmark's k = 100, d = 512) for k = 100 and 300 in blocks of at most
    512 rows; slower in bigger blocks (0.6-0.8x at 1,024 rows or more) and for k = 1,000 (0.7-1.0x).
    k between 300 and 1,000 was not measured and keeps rows first."""
    return k <= 32 or (k <= 300 and n_rows <= 512)


def _between_passes():
    """For the k x d arithmetic between two passes (distance terms, center update): the calling
    thread alone. With torch's OpenMP threads each op's fork leaves the OpenMP worker spinning
    (GOMP_SPINCOUNT, several ms) on a core the next pass's threads need: measured 5-10% of a
    100,000 x 512 pass (docs/scaling.md (h10))."""
    return _num_threads(1)


def _too_big_for_ram(X):
    if not isinstance(X, np.memmap):
        return False
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # psutil is optional; sysconf is enough on Linux
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return X.shape[0] * X.shape[1] * 4 > _RAM_FRACTION * available


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means clustering on CPU or GPU that also runs on memmaps larger than RAM.

    Full-batch iterations are exact Lloyd iterations accelerated with Hamerly's bounds (one
    upper bound to the assigned center and one lower bound to the second-nearest per point,
    loosened by the center shifts after each update; only rows whose bounds do not prove their
    assignment are recomputed), or plain Lloyd with ``algorithm='lloyd'``. Distances are
    computed by matrix products in chunks of rows; with
    ``mini_batch=True``, or automatically for a memmap bigger than a quarter of the available
    RAM, centers are instead updated from random chunks (mini-batch K-means with a per-center
    learning rate ``1 / n_points_seen``, Sculley 2010), reading only one chunk at a time.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of clusters.
    n_init : int, default 3
        Number of initialisations; the run with the lowest inertia is kept (the lowest
        inertia on the sample in mini-batch mode). Ignored when ``init`` is an array.
    max_iter : int, default 100
        Maximum number of Lloyd iterations, or of passes over the data in mini-batch mode.
    tol : float, default 1e-4
        Stop when the summed squared center shift is below ``tol`` times the mean per-feature
        variance of ``X`` (scikit-learn's rule; the variance is estimated on the init sample).
    init : {'k-means++', 'random'} or ndarray of shape (n_clusters, n_features), default 'k-means++'
        k-means++ and 'random' pick centers from a sample of at most
        ``max(10 * n_clusters, 50000)`` rows (k-means++ from at most
        ``max(10 * n_clusters, 5e6 / n_clusters)`` of them), so initialisation stays cheap at
        large ``n`` and ``n_clusters``.
    batch_size : int or None, default None
        Rows per chunk (and per mini-batch). ``None`` chooses it so that one
        ``(rows, n_clusters)`` distance block and one chunk of ``X`` each stay under 256 MB
        (and mini-batches at most 65,536 rows).
    mini_batch : bool, default False
        Use streaming mini-batch K-means (approximate, one chunk in memory at a time).
    algorithm : {'auto', 'hamerly', 'lloyd'}, default 'auto'
        Full-batch iterations: ``'hamerly'`` keeps two float32 bounds and the squared norm
        per row (16 bytes) and recomputes the distances of only the rows they do not settle,
        with conservative rounding slack so that the assignments are Lloyd's (up to float
        ties), and the distances of the few centers that moved most for every row; ``'lloyd'``
        recomputes every row every iteration. ``'auto'``: Hamerly on the CPU (up to 6x fewer
        seconds per iteration on clustered data, docs/scaling.md), Lloyd on CUDA, where the
        matrix product is cheap next to the bounds' bookkeeping (measured on an H200 at
        1,000,000 x 768, k = 1,000, on clustered data: 45.2 against 50.2 ms per iteration in
        float32, 19.2 against 27.2 in bf16). Ignored in mini-batch mode.
    device : {'cpu', 'cuda'} or None, default None
        Where to compute; ``None`` means CUDA when available, else CPU.
    dtype : {'float32', 'bfloat16'}, default 'float32'
        Precision of the distance matrix product; ``'bfloat16'`` needs CUDA or a CPU with
        bf16 matrix units (:func:`cpu_has_bf16_units`: Intel AMX or AVX512-BF16), and gives
        nearly Lloyd's labels (ties within bf16's rounding may go either way; the objective
        stays within 0.1%). Centers are always updated in float32. On the CPU, an in-memory
        ``X`` is rounded to bf16 once per ``fit``, which takes half of X's memory more.
    random_state : int, RandomState or None, default None
        Seed for initialisation and mini-batch order; an int makes ``fit`` deterministic.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), float32
    labels_ : ndarray of shape (n_samples,), int32
    inertia_ : float
        Sum of squared distances of samples to their closest center (computed exactly).
    n_iter_ : int
        Lloyd iterations run, or passes over the data in mini-batch mode.
    n_features_in_ : int
    mini_batch_ : bool
        Whether mini-batch mode was used.
    n_recomputed_ : ndarray of shape (n_iter_,), int64
        Rows whose distances to all centers were computed in each iteration's assignment
        step (``n_samples`` every iteration for Lloyd; empty in mini-batch mode).
    n_moved_centers_ : ndarray of shape (n_iter_,), int64
        Hamerly: after each iteration's update, how many of the centers that moved most had
        their distances to every row computed in the next pass (instead of loosening every
        row's bound by their shift); zeros for Lloyd, empty in mini-batch mode.

    Examples
    --------
    >>> import numpy as np
    >>> from visclust.kmeans import KMeans
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10].astype(np.float32)
    >>> km = KMeans(n_clusters=2, random_state=0, device="cpu").fit(X)
    >>> sorted(np.bincount(km.labels_))
    [5, 5]
    >>> big = np.load("features.npy", mmap_mode="r")  # doctest: +SKIP
    >>> KMeans(1000, mini_batch=True, random_state=0).fit(big)  # doctest: +SKIP
    """

    def __init__(self, n_clusters=8, *, n_init=3, max_iter=100, tol=1e-4, init="k-means++", batch_size=None,
                 mini_batch=False, algorithm="auto", device=None, dtype="float32", random_state=None):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.batch_size = batch_size
        self.mini_batch = mini_batch
        self.algorithm = algorithm
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    # ----------------------------------------------------------------- checks and setup
    def _check_params(self):
        for name, (ok, expected) in _PARAMS.items():
            value = getattr(self, name)
            if not ok(value):
                default = self.__init__.__kwdefaults__.get(name, 8)
                raise InputError(f"KMeans {name}={value!r} is invalid: expected {expected} "
                                 f"(default {default!r}); pass e.g. KMeans({name}={default!r})")

    def _device(self):
        dev = torch.device(self.device if self.device is not None
                           else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device='cuda' but no CUDA device is visible; pass device='cpu' or device=None")
        if self.dtype == "bfloat16" and dev.type != "cuda" and not cpu_has_bf16_units():
            raise InputError("dtype='bfloat16' needs CUDA or a CPU with bf16 matrix units (AMX or AVX512-BF16; "
                             "elsewhere it is slower, not faster); use dtype='float32' or device='cuda'")
        return dev

    def _algorithm(self, dev) -> str:
        """The full-batch algorithm run on ``dev`` (``'auto'`` resolved)."""
        if self.algorithm != "auto":
            return self.algorithm
        return "lloyd" if dev.type == "cuda" else "hamerly"

    def _rows(self, n, d):
        if self.batch_size is not None:
            return int(self.batch_size)
        return int(min(n, max(256, _BLOCK_BYTES // (4 * max(self.n_clusters, d)))))

    def _check_fitted(self, X):
        if not hasattr(self, "cluster_centers_"):
            raise _NotFittedError("This KMeans instance is not fitted yet; call fit(X) before predict, "
                                 "transform or score")
        X = _check_array(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but KMeans is expecting {self.n_features_in_} "
                             "features as input; pass features from the same backbone / reduction used in fit")
        dev = self._device()
        return X, dev, torch.from_numpy(self.cluster_centers_).to(dev)

    # ----------------------------------------------------------------- chunked kernels
    def _chunks(self, X, rows, dev):
        for start in range(0, X.shape[0], rows):
            yield start, _to_tensor(X[start:start + rows], dev)
            _release_pages(X)

    def _map_chunks(self, X, rows, dev, fn, index=None, workers=None):
        """Sum of ``fn(start, x)`` (a tuple of tensors) over chunks of rows, in row order.

        With ``index`` (a 1-D int64 tensor of row numbers), the rows
        ``X[index]`` are mapped instead, gathered chunk by chunk inside the workers, and ``fn``
        gets the chunk's row numbers in place of ``start``. ``workers`` defaults to torch's
        thread count.

        On CPU, chunks are cache-sized (fresh 100 MB temporaries cost more in page faults than
        in arithmetic) and spread over as many Python threads as torch has threads, each
        running single-threaded ops as scikit-learn's Lloyd does: one join per window of
        chunks (up to ``_BLOCK_BYTES`` of rows) instead of one per op, which matters most on a
        busy machine; chunks are equal and a multiple of the thread count per pass.
        """
        n = X.shape[0] if index is None else len(index)
        workers, total, unreleased = workers or torch.get_num_threads(), None, 0
        if dev.type == "cpu":  # at least one piece per thread
            rows = min(rows, max(256, _PIECE_BYTES // (4 * max(self.n_clusters, X.shape[1]))),
                       max(256, -(-n // workers)))
        threaded = dev.type == "cpu" and workers > 1 and n > rows
        per_window = 1
        if threaded:  # equal pieces, a multiple of the thread count: no thread idles at the end;
            # up to _BLOCK_BYTES of rows per window: the threads pull pieces and join once per window
            pieces = workers * -(-n // (workers * rows))
            rows = -(-n // pieces)
            per_window = workers * max(1, _BLOCK_BYTES // (4 * rows * max(self.n_clusters, X.shape[1]) * workers))
        step = rows * per_window

        def call(item):
            key, x = item
            if x is None:  # gather here, in the worker: the copy is spread over the threads
                if isinstance(X, torch.Tensor):
                    x = X.index_select(0, key.to(X.device)).to(dev)
                else:  # a fancy-indexed copy is writable: no warning from from_numpy
                    x = torch.from_numpy(np.ascontiguousarray(X[key.cpu().numpy()], dtype=np.float32)).to(dev)
            return fn(key, x)

        def single_threaded(item):
            torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
            return call(item)

        with _num_threads(1) if threaded else contextlib.nullcontext():
            pool = _pool(workers) if threaded else None
            for w in range(0, n, step):
                items = [(s, _to_tensor(X[s:s + rows], dev)) if index is None else (index[s:s + rows], None)
                         for s in range(w, min(n, w + step), rows)]
                for part in pool.map(single_threaded, items) if threaded else (call(i) for i in items):
                    total = part if total is None else tuple(a + b for a, b in zip(total, part))
                unreleased += step * X.shape[1] * 4
                if unreleased > _BLOCK_BYTES and index is None:
                    _release_pages(X)
                    unreleased = 0
        if index is None:
            _release_pages(X)
        return total

    def _terms(self, centers, exact=False):
        """``(||c||^2, -2 C^T)``, computed once per pass; the matrix in bf16 when asked. On the
        CPU the matrix is ``-2 C`` instead (k x d), so that a block can be computed as
        ``(-2 C) x^T``, centers by rows, where that is faster (:func:`_centers_by_rows`), or as
        ``x (-2 C)^T``."""
        w = centers * -2
        w = w.contiguous() if centers.device.type == "cpu" else w.T.contiguous()
        return (centers * centers).sum(1), (w.to(torch.bfloat16) if self.dtype == "bfloat16" and not exact else w)

    def _sub_rows(self, d):
        """CPU: rows per cache-sized block inside a thread's piece (see ``_SUB_BYTES``)."""
        return max(64, _SUB_BYTES // (4 * max(d, self.n_clusters)))

    def _nearest(self, x, terms, start=0, second=False, xb=None, blocked=True):
        """Index of the closest center and ``min_j ||c_j||^2 - 2 x.c_j`` for each row of ``x``
        (and, with ``second``, the same minimum over the other centers). ``xb``: the same rows
        already rounded to bf16 (CPU), used for the bf16 product instead of rounding ``x`` again.
        On the CPU and with ``blocked``, computed in blocks of :meth:`_sub_rows` rows, whose
        distances stay in cache (Hamerly's gathered rows are not: measured slower there, (h8))."""
        n, sub = len(x), self._sub_rows(x.shape[1])
        if x.device.type != "cpu" or n <= sub or not blocked:
            return self._nearest_block(x, terms, start, second, xb)
        out = [torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.int64)]
        if second:
            out.append(torch.empty(n, dtype=torch.float32))
        for o in range(0, n, sub):
            part = self._nearest_block(x[o:o + sub], terms, start + o, second, None if xb is None else xb[o:o + sub])
            for a, b in zip(out, part):
                a[o:o + sub] = b
        return tuple(out)

    def _nearest_block(self, x, terms, start=0, second=False, xb=None):
        """:meth:`_nearest` on one block."""
        c_sq, w = terms
        by_rows = x.device.type == "cpu" and _centers_by_rows(len(x), w.shape[0])
        if x.device.type == "cpu":  # bf16 (oneDNN): bf16 output, within _gamma's bf16 term
            xin = (x.to(w.dtype) if xb is None else xb) if w.dtype == torch.bfloat16 else x
            d = torch.mm(w, xin.T) if by_rows else torch.mm(xin, w.T)
            d = d.float() if d.dtype != torch.float32 else d
            d.add_(c_sq[:, None] if by_rows else c_sq)  # (mm then add_ is faster than addmm on CPU)
        elif w.dtype == torch.bfloat16:
            try:  # fp32 output: only the inputs are rounded to bf16
                d = torch.mm(x.to(w.dtype), w, out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):
                d = (x.to(w.dtype) @ w).float()
            d.add_(c_sq)
        else:
            d = (x @ w).add_(c_sq)
        axis = 0 if by_rows else 1
        mins, labels = d.min(dim=axis)
        # a NaN/inf in a row of x makes its min non-finite, and then the sum: one cheap check
        if not bool(torch.isfinite(mins.sum())) and not bool(torch.isfinite(mins).all()):
            row = start + int(torch.nonzero(~torch.isfinite(mins))[0])
            raise InputError(f"X contains NaN or infinity (first at row {row}); remove or impute those rows, "
                             "e.g. X = X[np.isfinite(X).all(axis=1)]")
        if second:
            own = labels[None, :] if by_rows else labels[:, None]
            return mins, labels, d.scatter_(axis, own, float("inf")).amin(dim=axis)
        return mins, labels

    def _assign(self, X, centers, rows, dev, accumulate=False, xb=None):
        """One pass: labels, and either per-cluster (sums, counts) or the exact inertia.
        ``xb``: ``X`` rounded to bf16 once (see :meth:`_bf16_rows`), or None."""
        n, (k, d) = X.shape[0], centers.shape
        with _between_passes():
            terms = self._terms(centers)
        labels = np.empty(n, dtype=np.int32)

        sub = self._sub_rows(d) if dev.type == "cpu" else max(1, X.shape[0])

        def work(start, x):  # per block of `sub` rows on CPU: its distances and sums stay in cache
            sums = torch.zeros((k, d), dtype=x.dtype, device=dev) if accumulate else None
            counts, err = 0, 0.0
            for o in range(0, len(x), sub):
                xs, at = x[o:o + sub], start + o
                lab = self._nearest_block(xs, terms, at, xb=None if xb is None else xb[at:at + len(xs)])[1]
                labels[at:at + len(xs)] = lab.cpu().numpy()
                if accumulate:  # float32 sums per chunk, float64 across chunks
                    sums.index_add_(0, lab, xs)
                    counts = counts + torch.bincount(lab, minlength=k)
                else:
                    diff = torch.index_select(centers, 0, lab).sub_(xs)  # exact, one temporary
                    err += diff.pow_(2).sum().double()
            return (sums.double(), counts) if accumulate else (err,)

        out = self._map_chunks(X, rows, dev, work)
        if accumulate:
            return labels, out[0], out[1], 0.0
        return labels, None, None, float(out[0])

    # ----------------------------------------------------------------- initialisation
    def _sample(self, X, rng):
        n = X.shape[0]
        m = min(n, max(10 * self.n_clusters, _SAMPLE_ROWS))
        if m == n:
            return np.arange(n)
        if n <= 4 * m:
            return np.sort(rng.permutation(n)[:m])
        idx = np.unique(rng.randint(0, n, size=m + m // 4))  # no O(n) permutation at n = 1e9
        while len(idx) < m:
            idx = np.unique(np.r_[idx, rng.randint(0, n, size=m)])
        return np.sort(rng.permutation(idx)[:m])

    def _init_centers(self, x, rng, dev):
        if not isinstance(self.init, str):
            return _to_tensor(np.asarray(self.init, dtype=np.float32), dev).clone()
        k, m = self.n_clusters, x.shape[0]
        if self.init == "random":
            return x[torch.from_numpy(np.sort(rng.choice(m, k, replace=False))).to(x.device)].clone()
        # greedy k-means++ (as scikit-learn): 2 + log(k) candidates per step, keep the best
        if x.device.type == "cpu":  # ~4k small ops: OpenMP fork/joins would cost more than they save
            with _num_threads(1):
                return self._kmeans_plusplus(x, rng)
        return self._kmeans_plusplus(x, rng)

    def _kmeans_plusplus(self, x, rng):
        k, m = self.n_clusters, x.shape[0]
        if m > max(10 * k, _SAMPLE_ROWS * 100 // k):  # each of the k steps reads all m rows: bound k * m
            m = max(10 * k, _SAMPLE_ROWS * 100 // k)
            x = x[torch.from_numpy(rng.permutation(x.shape[0])[:m]).to(x.device)]
        trials = 2 + int(np.log(k))
        x_sq = (x * x).sum(1)
        chosen = [int(rng.randint(m))]
        closest = (x_sq - 2 * (x @ x[chosen[0]]) + x_sq[chosen[0]]).clamp_min_(0)
        for _ in range(1, k):
            cum = torch.cumsum(closest, 0, dtype=torch.float64)
            r = torch.from_numpy(rng.uniform(size=trials)).to(x.device) * cum[-1]
            cand = torch.searchsorted(cum, r).clamp_(max=m - 1)
            d = torch.addmm(x_sq[cand], x, x[cand].T, alpha=-2).add_(x_sq[:, None]).clamp_min_(0)
            d = torch.minimum(d, closest[:, None])
            best = int(torch.argmin(d.sum(0)))
            closest = d[:, best].contiguous()
            chosen.append(int(cand[best]))
        return x[chosen].clone()

    # ----------------------------------------------------------------- the two algorithms
    def _lloyd(self, X, centers, tolerance, rows, dev, max_iter, xb=None):
        labels_old, it = None, 0
        for it in range(1, max_iter + 1):
            labels, sums, counts, _ = self._assign(X, centers, rows, dev, accumulate=True, xb=xb)
            if bool((counts == 0).any()):
                self._relocate_empty(X, centers, labels, sums, counts, rows, dev)
            with _between_passes():
                new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers.double()).float()
                shift = float(((new - centers) ** 2).sum())
            centers = new
            if labels_old is not None and np.array_equal(labels, labels_old):
                break  # labels did not change: centers are a fixed point
            labels_old = labels
            if shift <= tolerance:
                break
        labels, _, _, inertia = self._assign(X, centers, rows, dev, xb=xb)
        return centers, labels, inertia, it, np.full(it, X.shape[0], dtype=np.int64), np.zeros(it, dtype=np.int64)

    def _gamma(self, d):
        """Relative rounding-error bound (with a factor-2 margin) of a squared distance from the
        expansion ``||x||^2 - 2 x.c + ||c||^2`` in float32: ``|error| <= gamma (||x|| + ||c||)^2``
        (a length-d dot product errs by at most ``d u sum |x_i c_i|``); bf16 inputs add their
        rounding (2^-9 each)."""
        return 2 * (d + 4) * _U + (2.0**-7 if self.dtype == "bfloat16" else 0.0)

    def _hamerly(self, X, centers, tolerance, rows, dev, max_iter, xb=None):
        """Exact Lloyd iterations with Hamerly's bounds (Hamerly 2010).

        Per row: ``upper`` >= distance to its center, ``lower`` <= distance to every other
        center, and the row's squared norm (16 bytes per row, labels as int64). A row is settled when
        ``upper <= max(lower, s(c))``, ``s(c)`` half the distance from its center to the
        nearest other one; otherwise ``upper`` is
        tightened to the exact distance, and if that does not settle it, the row's distances to
        all centers are recomputed (a matrix product on the gathered rows). Tightening is
        skipped (failing rows recomputed directly) while the share of rows it settles, measured
        every pass, is too small to pay for it (see ``_TIGHTEN``). After each update
        ``upper`` grows by its center's shift and ``lower`` shrinks by the largest shift of the
        other centers, except that the few centers which moved far more than the rest (early
        iterations: a center jumping to another group) are taken out of that maximum: every
        row's distances to those m centers are computed exactly instead (an ``n x m`` product,
        m chosen per iteration to minimise the estimated work), which keeps ``lower`` tight
        where one large shift would otherwise unsettle every row. Every bound is rounded
        outwards by more than float32's error (see ``_gamma``), so settled rows are those whose
        exact nearest center is unchanged and the labels are Lloyd's up to float ties. Centre
        sums are kept in float64 and updated by the rows that change cluster only.
        """
        workers = torch.get_num_threads()  # for the passes; the O(n) bookkeeping runs on one thread,
        with _num_threads(1):  # where OpenMP's fork/join would cost more than the arithmetic
            return self._hamerly_run(X, centers, tolerance, rows, dev, max_iter, workers, xb)

    def _hamerly_run(self, X, centers, tolerance, rows, dev, max_iter, workers, xb=None):
        n, d = X.shape
        k = centers.shape[0]
        Xt = X  # rows are gathered from a tensor view where that costs no copy (float32 input)
        if not isinstance(X, torch.Tensor) and X.dtype == np.float32 and X.flags.c_contiguous:
            Xt = _to_tensor(X, torch.device("cpu"))
        upper = torch.empty(n, dtype=torch.float32, device=dev)
        lower = torch.empty(n, dtype=torch.float32, device=dev)
        labels = torch.empty(n, dtype=torch.int64, device=dev)  # int64: indexes without a copy
        x_sq = torch.empty(n, dtype=torch.float32, device=dev)
        gamma, up, down = self._gamma(d), 1 + 4 * _U, 1 - 4 * _U
        state = {}

        def prepare(centers):  # per pass: distance terms, max ||c||, s(c)
            state["centers"], state["terms"] = centers, self._terms(centers)
            state["cmax"] = float(state["terms"][0].max().sqrt()) * (1 + 1e-6)
            c = centers.double()  # float64 expansion, less its own error bound: a lower bound
            c_sq = (c * c).sum(1)
            norm = c_sq.sqrt()
            cc = torch.addmm(c_sq[:, None] + c_sq[None, :], c, c.T, alpha=-2)
            cc.sub_((norm[:, None] + norm[None, :]).pow_(2).mul_(2 * (d + 4) * 2.0**-53)).clamp_min_(0)
            half = cc.fill_diagonal_(float("inf")).min(1).values.sqrt_().mul_(0.5 * (1 - 2.0**-20))
            state["half"] = half.float()
            state["moved"] = None  # centers whose distances the next pass computes for every row

        def choose_moved(p):
            """The m centers with the largest shifts to compute exactly for every row, and the
            shift that loosens ``lower`` for the rest: m minimises the estimated work
            ((m + _PARTIAL_FIXED) / k of a pass, plus the share of rows whose bounds would still fail)."""
            ps, order = p.sort(descending=True)
            cands = [m for m in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if m <= k // 4]
            if k < 8 or ps[0] <= 0:
                return 0, order
            step = max(1, n // 8192)  # estimated on a strided sample of about 8,192 rows
            u = upper[::step]
            gap = lower[::step] - u  # rows failing with m = 0 (`lower` dropping by ps[0]): gap < ps[0]
            gap = gap[(gap < ps[0]) & (u > state["half"].index_select(0, labels[::step]))]
            if len(gap) * k * _SPARSE_ROW <= (1 + _PARTIAL_FIXED) * len(u):  # cheaper than any partial pass
                return 0, order
            deltas = ps[torch.tensor(cands, device=dev)]  # rows that fail if `lower` drops by deltas[j]
            fails = (gap[:, None] < deltas[None, :]).sum(0)
            # a partial pass reads every row once, whatever m: count that as _PARTIAL_FIXED centers
            cost = torch.tensor([m + _PARTIAL_FIXED if m else 0 for m in cands], dtype=torch.float64, device=dev) / k \
                + _SPARSE_ROW * fails.double() / len(u)
            return cands[int(cost.argmin())], order

        def bounds(x, x_sq, a_old, write, x_bf16=None, blocked=True):
            """Recompute the rows ``x``: new labels, bounds written by ``write``; row-change deltas."""
            mins, a, second = self._nearest(x, state["terms"], second=True, xb=x_bf16, blocked=blocked)
            err = (x_sq.sqrt() + state["cmax"]).pow_(2).mul_(gamma)
            write(a, (mins + x_sq + err).clamp_min_(0).sqrt_().mul_(up),
                  (second + x_sq - err).clamp_min_(0).sqrt_().mul_(down))
            if a_old is None:  # first pass: per-cluster sums, float32 per chunk as Lloyd's
                sums = torch.zeros((k, d), dtype=x.dtype, device=dev).index_add_(0, a, x)
                return sums.double(), torch.bincount(a, minlength=k), len(x), 0
            moved = torch.nonzero(a != a_old).flatten()
            if len(moved) == 0:
                return 0, 0, len(x), 0
            xm, to, fro = x[moved].double(), a[moved], a_old[moved]
            delta = torch.zeros((k, d), dtype=torch.float64, device=dev).index_add_(0, to, xm)
            delta.index_add_(0, fro, xm, alpha=-1)
            return delta, torch.bincount(to, minlength=k) - torch.bincount(fro, minlength=k), len(x), len(moved)

        def dense(start, x):  # every row of a contiguous block
            sl = slice(start, start + len(x))

            def write(a, u, lo):
                labels[sl], upper[sl], lower[sl] = a, u, lo
            if state["first"]:  # squared row norms, kept for every later pass (rows do not change)
                x_sq[sl] = torch.linalg.vector_norm(x, dim=1).square_()
            a_old = None if state["first"] else labels[sl].clone()  # a copy: `write` overwrites the slice
            return bounds(x, x_sq[sl], a_old, write, None if xb is None else xb[sl]) + (0, 0)

        def sparse(idx, x):
            """Gathered rows whose bounds failed: tighten ``upper`` to the exact distance to the
            own center, then recompute the rows still unsettled; or, when tightening does not
            pay, recompute every row, having tightened every _PROBE-th one only to keep
            measuring how often tightening settles a row."""
            a_old = labels.index_select(0, idx)
            probe = slice(None) if state["tighten"] else slice(None, None, _PROBE)
            ip, ap = idx[probe], a_old[probe]
            tight = torch.linalg.vector_norm(x[probe] - state["centers"].index_select(0, ap), dim=1).mul_(1 + gamma)
            settled = tight <= torch.maximum(state["half"].index_select(0, ap), lower.index_select(0, ip))
            n_settled = int(settled.sum())
            if state["tighten"]:
                upper[idx] = tight
                fail = torch.nonzero(~settled).flatten()
                if len(fail) == 0:
                    return 0, 0, 0, 0, len(ip), n_settled
                if len(fail) < len(idx):
                    idx, x, a_old = idx[fail], x[fail], a_old[fail]
            rows_f = idx

            def write(a, u, lo):
                labels[rows_f], upper[rows_f], lower[rows_f] = a, u, lo
            return bounds(x, x_sq[rows_f], a_old, write, None if xb is None else xb.index_select(0, rows_f),
                          blocked=False) \
                + (len(ip), n_settled)

        def partial(start, x):  # every row against the centers that moved most: exact bounds
            sl = slice(start, start + len(x))
            cm, wm, pos = state["moved"]
            dd = (x @ wm).add_(cm)  # ||c||^2 - 2 x.c for the moved centers
            sq = x_sq[sl]
            err = (sq.sqrt() + state["cmax"]).pow_(2).mul_(gamma)
            pa = pos.index_select(0, labels[sl])
            own = torch.nonzero(pa >= 0).flatten()
            if len(own):  # rows whose own center moved far: its exact distance
                col = pa[own]
                upper[start + own] = (dd[own, col] + sq[own] + err[own]).clamp_min_(0).sqrt_().mul_(up)
                dd[own, col] = float("inf")
            lo = (dd.min(1).values + sq - err).clamp_min_(0).sqrt_().mul_(down)
            torch.minimum(lower[sl], lo, out=lower[sl])
            return (0,)

        def assign_pass():
            """One assignment step: (delta sums, delta counts, rows recomputed, rows moved,
            rows tightened, rows settled by tightening)."""
            total = (0, 0, 0, 0, 0, 0)
            if state["first"]:
                return self._map_chunks(X, rows, dev, dense, workers=workers)
            if state["moved"] is not None:
                self._map_chunks(X, rows, dev, partial, workers=workers)
            for w in range(0, n, _WINDOW):
                e = min(n, w + _WINDOW)
                a = labels[w:e]
                idx = torch.nonzero(upper[w:e] > torch.maximum(state["half"].index_select(0, a), lower[w:e])).flatten()
                del a
                if len(idx) == 0:
                    continue
                if len(idx) > _DENSE * (e - w):
                    part = self._map_chunks(X[w:e], rows, dev, lambda s, x: dense(s + w, x), workers=workers)
                else:
                    part = self._map_chunks(Xt, rows, dev, sparse, index=idx + w, workers=workers)
                total = tuple(p + q for p, q in zip(total, part))
            if total[4]:  # tighten every failing row next time only if that saves more than it costs
                state["tighten"] = total[5] / total[4] * (k + _ROW_FIXED) > _TIGHTEN
            return total

        sums, counts, recomputed, moved_centers, it = None, None, [], [], 0
        state["first"], state["tighten"] = True, True
        prepare(centers)
        for it in range(1, max_iter + 1):
            dsums, dcounts, n_rec, n_moved = assign_pass()[:4]
            recomputed.append(int(n_rec))
            if state["first"]:
                sums, counts, state["first"] = dsums, dcounts, False
            else:
                sums += dsums
                counts += dcounts
            if bool((counts == 0).any()):
                lab = labels.cpu().numpy()
                before = lab.copy()
                self._relocate_empty(X, centers, lab, sums, counts, rows, dev)
                moved = torch.from_numpy(np.flatnonzero(lab != before)).to(dev)
                labels[moved] = torch.from_numpy(lab[lab != before]).to(dev)
                upper[moved], lower[moved] = float("inf"), 0.0  # recomputed in the next pass
                n_moved += len(moved)
            new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers.double()).float()
            delta = (new.double() - centers.double()).pow_(2).sum(1)
            shift = float(((new - centers) ** 2).sum())
            p = (delta.sqrt() * (1 + 2.0**-20)).float()
            centers = new
            prepare(centers)
            for w in range(0, n, _WINDOW):  # loosen `upper` by its center's shift
                upper[w:w + _WINDOW].add_(p.index_select(0, labels[w:w + _WINDOW])).mul_(up)
            m, order = choose_moved(p)
            moved_centers.append(m)
            if m:  # the m largest shifts: those centers' distances are computed in the next pass
                sel = order[:m]
                pos = torch.full((k,), -1, dtype=torch.int64, device=dev)
                pos[sel] = torch.arange(m, device=dev)
                c_m = centers.index_select(0, sel)
                state["moved"] = ((c_m * c_m).sum(1), (c_m * -2).T.contiguous(), pos)
            if k > 1:  # `lower`: by the largest shift of the other centers outside that set
                arg = order[m:m + 2]  # (m <= k // 4, so two are left)
                drop = p[arg[0]].expand(k).clone()  # per center: the largest shift of the others
                drop[arg[0]] = p[arg[1]]
                for w in range(0, n, _WINDOW):
                    lower[w:w + _WINDOW].sub_(drop.index_select(0, labels[w:w + _WINDOW])).mul_(down)
            if it > 1 and n_moved == 0:
                break  # labels did not change: centers are a fixed point
            if shift <= tolerance:
                break
        assign_pass()  # labels for the final centers
        lab = labels.cpu().numpy() if dev.type != "cpu" else labels.numpy()

        def sq_err(start, x):
            lab_t = labels[start:start + len(x)]
            return (torch.index_select(centers, 0, lab_t).sub_(x).pow_(2).sum().double(),)

        inertia = float(self._map_chunks(X, rows, dev, sq_err, workers=workers)[0])
        return (centers, lab.astype(np.int32, copy=False), inertia, it, np.asarray(recomputed, dtype=np.int64),
                np.asarray(moved_centers, dtype=np.int64))

    def _bf16_rows(self, X, dev):
        """With ``dtype='bfloat16'`` on the CPU, ``X`` rounded to bf16 once for every pass (half
        of X's memory more): rounding the rows on each pass cost more than the bf16 product
        itself with AMX (docs/scaling.md (h5)) and 40% of it with AVX512-BF16 ((h7)). None
        elsewhere: on CUDA the rounding is cheap, and a memmap is not copied into memory."""
        if self.dtype != "bfloat16" or dev.type != "cpu" or isinstance(X, np.memmap):
            return None
        return _to_tensor(X, dev).to(torch.bfloat16)

    def _relocate_empty(self, X, centers, labels, sums, counts, rows, dev):
        """Move the points farthest from their centers into the empty clusters (in place)."""
        empty = torch.nonzero(counts == 0).flatten().tolist()
        far_d = torch.empty(0, device=dev)
        far_i = torch.empty(0, dtype=torch.int64, device=dev)
        for start, x in self._chunks(X, rows, dev):
            lab = torch.from_numpy(labels[start:start + len(x)]).to(dev).long()
            dist = ((x - centers[lab]) ** 2).sum(1)
            top_d, top_i = dist.topk(min(len(empty), len(dist)))
            far_d, order = torch.cat([far_d, top_d]).topk(min(len(empty), len(far_d) + len(top_d)))
            far_i = torch.cat([far_i, top_i + start])[order]
        for j, i in zip(empty, far_i.tolist()):
            xi = _to_tensor(X[i:i + 1], dev)[0].double()
            old = int(labels[i])
            sums[old] -= xi
            counts[old] -= 1
            sums[j], counts[j], labels[i] = xi, 1, j

    def _stream(self, X, centers, tolerance, rows, dev, rng):
        """Mini-batch K-means: per-center learning rate 1/(points seen), random chunks of rows."""
        n, k = X.shape[0], centers.shape[0]
        seen = torch.zeros(k, dtype=torch.float64, device=dev)
        if self.batch_size is None:  # more, smaller updates per pass; 64k rows still fill a GEMM
            rows = min(rows, 65536)
        block = max(1, min(256, rows // 8))  # contiguous reads, shuffled order
        starts = np.arange(0, n, block)
        per_batch = max(1, rows // block)
        epoch = 0
        for epoch in range(1, self.max_iter + 1):
            before = centers.clone()
            order = rng.permutation(len(starts))
            for g in range(0, len(order), per_batch):
                sel = np.sort(order[g:g + per_batch])
                x = _to_tensor(np.concatenate([X[s:s + block] for s in starts[sel]]), dev)
                _release_pages(X)
                lab, sums, counts, _ = self._assign(x, centers, len(x), dev, accumulate=True)
                with _between_passes():
                    counts = counts.double()
                    seen += counts
                    hit = counts > 0
                    rate = (counts[hit] / seen[hit])[:, None]
                    means = sums[hit] / counts[hit][:, None]
                    centers[hit] = (centers[hit] + rate * (means - centers[hit])).float()
            dead = torch.nonzero(seen == 0).flatten()
            if len(dead):  # never won a point: restart at the farthest points of the last batch
                lab = torch.from_numpy(lab).to(dev).long()
                far = ((x - centers[lab]) ** 2).sum(1).topk(min(len(dead), len(x))).indices
                centers[dead[:len(far)]] = x[far]
            if float(((centers - before) ** 2).sum()) <= tolerance:
                break
        return centers, epoch

    # ----------------------------------------------------------------- public API
    @_one_thread_if_small
    def fit(self, X, y=None):
        """Compute cluster centers.

        Parameters
        ----------
        X : array-like or numpy memmap of shape (n_samples, n_features)
            A memmap (``np.load(path, mmap_mode='r')``) is read chunk by chunk, never whole.
        y : ignored

        Returns
        -------
        self : KMeans
        """
        self._check_params()
        X = _check_array(X)
        n, d = X.shape
        if n < self.n_clusters:
            raise InputError(f"X has n_samples={n} rows but n_clusters={self.n_clusters}; "
                             f"lower n_clusters to at most {n} or pass more samples")
        dev, rng = self._device(), check_random_state(self.random_state)
        rows = self._rows(n, d)
        streaming = bool(self.mini_batch) or _too_big_for_ram(X)
        if not isinstance(self.init, str):
            shape = np.shape(self.init)
            if shape != (self.n_clusters, d):
                raise InputError(f"init has shape {shape} but must be (n_clusters, n_features) = "
                                 f"({self.n_clusters}, {d}); pass one row per cluster or init='k-means++'")
            if not np.isfinite(np.asarray(self.init, dtype=np.float64)).all():
                raise InputError("init contains NaN or infinity; pass finite centers or init='k-means++'")
        n_init = self.n_init if isinstance(self.init, str) else 1
        if not isinstance(X, np.memmap):
            X = np.ascontiguousarray(X, dtype=np.float32)  # converted once, read every iteration
        idx = self._sample(X, rng)  # for k-means++ and the variance behind `tol`
        sample = np.empty((len(idx), d), dtype=np.float32)
        for s in range(0, len(idx), 4096):  # each random read maps ~64 kB around it: release as we go
            sample[s:s + 4096] = X[idx[s:s + 4096]]
            _release_pages(X)
        bad = np.flatnonzero(~np.isfinite(sample).all(axis=1))
        if len(bad):  # rows outside the sample are checked as each pass reads them
            raise InputError(f"X contains NaN or infinity (first at row {idx[bad[0]]}); "
                             "remove or impute those rows, e.g. X = X[np.isfinite(X).all(axis=1)]")
        sample = _to_tensor(sample, dev)
        centered = (sample - sample.mean(0)).flatten()  # a threshold: sdot's precision is plenty
        tolerance = self.tol * float(torch.dot(centered, centered)) / centered.numel()
        del centered
        if streaming:  # init on the sample (k-means++ then a few Lloyd steps), then stream
            best = min((self._lloyd(sample, self._init_centers(sample, rng, dev), tolerance, rows, dev,
                                    min(self.max_iter, 10)) for _ in range(n_init)), key=lambda run: run[2])
            centers, n_iter = self._stream(X, best[0], tolerance, rows, dev, rng)
            labels, _, _, inertia = self._assign(X, centers, rows, dev)
            recomputed = moved_centers = np.zeros(0, dtype=np.int64)
        else:
            Xd = X
            if dev.type == "cuda" and X.nbytes < 0.5 * torch.cuda.mem_get_info(dev)[0]:
                Xd = _to_tensor(X, dev)  # copied to the GPU once instead of every iteration
            run = self._hamerly if self._algorithm(dev) == "hamerly" else self._lloyd
            xb = self._bf16_rows(X, dev)
            best = min((run(Xd, self._init_centers(sample, rng, dev), tolerance, rows, dev, self.max_iter, xb=xb)
                        for _ in range(n_init)), key=lambda r: r[2])
            del xb
            centers, labels, inertia, n_iter, recomputed, moved_centers = best
        found = int(np.count_nonzero(np.bincount(labels, minlength=self.n_clusters)))
        if found < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({found}) found smaller than "
                          f"n_clusters ({self.n_clusters}); X may have duplicate points, or max_iter is too low",
                          ConvergenceWarning, stacklevel=2)
        self.cluster_centers_ = centers.cpu().numpy()
        self.labels_, self.inertia_, self.n_iter_ = labels, inertia, n_iter
        self.n_features_in_, self.mini_batch_, self.n_recomputed_ = d, streaming, recomputed
        self.n_moved_centers_ = moved_centers
        return self

    @_one_thread_if_small
    def predict(self, X):
        """Index of the closest center for each row of ``X`` (streamed chunk by chunk).

        Returns
        -------
        labels : ndarray of shape (n_samples,), int32
        """
        X, dev, centers = self._check_fitted(X)
        return self._assign(X, centers, self._rows(X.shape[0], X.shape[1]), dev)[0]

    @_one_thread_if_small
    def transform(self, X):
        """Euclidean distance from each row of ``X`` to each center.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters), float32
        """
        X, dev, centers = self._check_fitted(X)
        out = np.empty((X.shape[0], self.n_clusters), dtype=np.float32)
        with _between_passes():
            terms = self._terms(centers, exact=True)

        def work(start, x):
            d = (x @ (terms[1].T if x.device.type == "cpu" else terms[1])).add_(terms[0]).add_((x * x).sum(1)[:, None])
            if not bool(torch.isfinite(d.sum())):
                self._nearest(x, terms, start)  # raises, saying which row
            out[start:start + len(x)] = d.clamp_min_(0).sqrt_().cpu().numpy()
            return ()

        self._map_chunks(X, self._rows(X.shape[0], X.shape[1]), dev, work)
        return out

    @_one_thread_if_small
    def score(self, X, y=None):
        """Opposite of the inertia of ``X`` under the fitted centers (higher is better)."""
        X, dev, centers = self._check_fitted(X)
        return -self._assign(X, centers, self._rows(X.shape[0], X.shape[1]), dev)[3]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
