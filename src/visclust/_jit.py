"""numba's disk cache for compiled functions, switched on from here and unable to fail a run.

Used for umap-learn's and pynndescent's functions (:func:`visclust.reduce._cache_umap_jit`)
and for visclust's own (:mod:`visclust._umap_knn`, :mod:`visclust._resample`). numba's cache
files are pickles that numba writes and reads itself, kept where Python keeps its bytecode
cache (``__pycache__`` beside the package, else numba's per-user folder; ``NUMBA_CACHE_DIR``
moves them): the same trust as ``.pyc`` files. ``VISCLUST_NUMBA_CACHE=0`` leaves visclust's
switch off everywhere.
"""

from __future__ import annotations

import os


def cache_enabled() -> bool:
    """False when ``VISCLUST_NUMBA_CACHE=0``."""
    return os.environ.get("VISCLUST_NUMBA_CACHE", "1").strip() != "0"


def cache_on_disk(dispatcher) -> bool:
    """Switch numba's disk cache on for one ``numba.njit`` dispatcher that has none; a damaged
    entry is then compiled again and a failed write skipped. Returns whether it was switched
    on (False when switched off, already cached, or numba's internals are not as expected)."""
    if not cache_enabled():
        return False
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return False
    if not isinstance(dispatcher, Dispatcher) or not isinstance(getattr(dispatcher, "_cache", None), NullCache):
        return False
    try:
        dispatcher.enable_caching()
        _tolerate_cache_errors(dispatcher._cache)
    except Exception:  # a function numba cannot cache stays compiled per process
        return False
    return True


def _tolerate_cache_errors(cache) -> None:
    """A cache entry that cannot be read (damaged, from a half-written file) is compiled again,
    and one that cannot be written (disk full, read-only) is skipped: the cache only saves
    time, it must never fail a run."""
    load, save = cache.load_overload, cache.save_overload

    def load_overload(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except Exception:
            return None  # numba's "not in the cache": it compiles

    def save_overload(*args, **kwargs):
        try:
            save(*args, **kwargs)
        except Exception:
            pass

    cache.load_overload, cache.save_overload = load_overload, save_overload
