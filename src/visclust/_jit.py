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
    """Switch numba's disk cache on for one ``numba.njit`` dispatcher that has none (with
    :func:`tolerate_cache_errors`). Returns whether it was switched on (False when switched
    off, already cached, or numba's internals are not as expected)."""
    if not cache_enabled():
        return False
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return False
    if not isinstance(dispatcher, Dispatcher) or not isinstance(getattr(dispatcher, "_cache", None), NullCache):
        return False
    tolerate_cache_errors()
    try:
        dispatcher.enable_caching()
    except Exception:  # a function numba cannot cache stays compiled per process
        return False
    return True


def tolerate_cache_errors() -> None:
    """Make numba treat a cache entry it cannot read (damaged, truncated) as absent, so the
    function is compiled again, and skip a write that fails (disk full, read-only): the
    cache only saves time, it must never fail a run. numba itself raises there, and for
    functions compiled at import (umap-learn's own ``cache=True`` ones) that made ``import
    umap`` fail. Applies to every numba cache in this process, once."""
    try:
        from numba.core.caching import Cache
    except ImportError:
        return
    if getattr(Cache, "_visclust_tolerant", False):
        return
    load, save = Cache.load_overload, Cache.save_overload

    def load_overload(self, *args, **kwargs):
        try:
            return load(self, *args, **kwargs)
        except Exception:
            return None  # numba's "not in the cache": it compiles

    def save_overload(self, *args, **kwargs):
        try:
            save(self, *args, **kwargs)
        except Exception:
            pass

    Cache.load_overload, Cache.save_overload = load_overload, save_overload
    Cache._visclust_tolerant = True
