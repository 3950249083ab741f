"""The on-disk feature store: features computed once, found again by file, safe to kill.

Layout and why
--------------
::

    STORE/
      <cache key>/                 one directory per BackboneConfig.cache_key()
                                   (``<cache key>-torch`` for rows of GPU-decoded JPEGs)
        config.json                the BackboneConfig that produced every row below
        skipped.csv                path,reason of the files that could not be read
        shards/
          <shard>.npy              features (n_rows, feature_dim), float32 or float16
          <shard>.json             the shard's manifest: its rows' files (path, size,
                                   mtime_ns), dtype, shape, and the files it skipped

* **Keyed by what produced the features.** The directory name is a hash of the backbone
  name, the weights' SHA-256 and the preprocessing; ``config.json`` repeats the full
  config and is compared on open, so another backbone, other weights or another input size
  never reads stale rows (it gets its own directory).
* **Rows know their file.** A row is reused only while the file still has the absolute
  path, size and ``mtime_ns`` it had when the row was computed; an edited or replaced file
  is recomputed. Re-running on a folder where 10 images were added computes those 10.
* **.npy shards + a JSON manifest, not Parquet.** Every array tool reads ``.npy`` (numpy,
  PyTorch, Ray's ``read_numpy``, faiss) and ``np.load(mmap_mode='r')`` memory-maps a
  shard without reading it, which is what out-of-core K-means and Ray need; the manifest
  is plain JSON that any language reads. Parquet would add a dependency for a table whose
  only big column is a fixed-width float matrix.
* **Atomic, kill-safe writes.** A shard's ``.npy`` is written to a temporary name, fsynced
  and renamed; the manifest is written the same way *last*: it is the commit marker.
  Readers only see shards whose manifest exists, so ``kill -9`` at any moment leaves at
  worst an orphan temporary file (removed by the next writer once its process is gone)
  and loses only the rows not yet flushed (at most ``shard_rows`` rows or
  ``flush_seconds`` of work).
* **Concurrent writers need no lock.** Each shard has a unique name (time, pid, random)
  and no file is ever rewritten in place, so two processes can write one store at once;
  if both compute the same file, the later shard's row is used (the values are the same).
  ``skipped.csv`` is rebuilt from the manifests and replaced atomically.
* **Memory bounded by one shard.** Writers buffer at most ``shard_rows`` rows; readers
  gather requested rows shard by shard through memory maps.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .backbones import BackboneConfig
from .exceptions import FeatureStoreError, InputError

FORMAT = "visclust-feature-store"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")

#: (size, mtime_ns) of a file: a row is valid while its file still has these.
FileStat = tuple[int, int]


def file_stat(path: str) -> FileStat | None:
    """``(size, mtime_ns)`` of ``path`` (following symlinks), or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size, st.st_mtime_ns


def check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise InputError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


@dataclass(frozen=True)
class Shard:
    """One committed shard: its files and (lazily) its features."""

    name: str
    features_path: str | None
    paths: list[str]
    sizes: list[int]
    mtimes: list[int]
    dtype: str
    skipped: list[tuple[str, int, int, str]]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, mmap: bool = True) -> np.ndarray:
        """Features ``(len(self), feature_dim)``; memory-mapped by default."""
        if self.features_path is None:
            raise FeatureStoreError(f"shard {self.name} holds no rows")
        return np.load(self.features_path, mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass
class _Row:
    shard: int
    row: int
    size: int
    mtime: int


class FeatureStore:
    """Features of image files for one backbone config, on disk.

    Parameters
    ----------
    root : path
        The store directory (shared by all backbones; each config gets a subdirectory).
    config : BackboneConfig
        What produces the features; rows from any other config are never seen.
    create : bool, default True
        Create the directories if missing (False: raise if the store does not exist).
    decoder : {'pil', 'torch', 'nvimgcodec'}, default 'pil'
        Which image decoder made the rows. JPEGs decoded on the GPU (``torchvision.io.
        decode_jpeg``, NVIDIA nvImageCodec) give slightly different pixels than PIL, so their
        rows live in a directory of their own (``<cache key>-torch``, ``-nvimgcodec``).

    Examples
    --------
    >>> store = FeatureStore("features/", backbone.config)           # doctest: +SKIP
    >>> todo = store.missing(paths)                                  # doctest: +SKIP
    >>> X, found, absent = store.read(paths)                         # doctest: +SKIP
    >>> for shard in store.shards(): X = shard.load()  # memory maps # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, config: BackboneConfig, *, create: bool = True, decoder: str = "pil"):
        if decoder not in ("pil", "torch", "nvimgcodec"):
            raise InputError(f"decoder must be 'pil', 'torch' or 'nvimgcodec', got {decoder!r}")
        self.root = os.path.abspath(os.fspath(root))
        self.config = config
        self.decoder = decoder
        self.path = os.path.join(self.root, config.cache_key() + ("" if decoder == "pil" else f"-{decoder}"))
        self.shards_dir = os.path.join(self.path, "shards")
        self._index: dict[str, _Row] | None = None
        self._shards: list[Shard] = []
        self._seen: set[str] = set()
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise FeatureStoreError(f"feature store '{self.root}' exists and is not a directory; give a directory for --store")
        self._check_config(create)

    # ------------------------------------------------------------------ config
    def _check_config(self, create: bool) -> None:
        cfg_path = os.path.join(self.path, "config.json")
        want = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": self.config.to_dict(),
                "decoder": self.decoder}
        want = json.loads(json.dumps(want))  # tuples -> lists, as read back
        if not os.path.isfile(cfg_path):
            if not create:
                raise FeatureStoreError(f"no features for {self.config.name} in store '{self.root}'; run `visclust extract` first")
            try:
                os.makedirs(self.shards_dir, exist_ok=True)
                _write_atomic(cfg_path, json.dumps(want, indent=1, sort_keys=True).encode())
            except OSError as e:
                raise FeatureStoreError(f"cannot create feature store in '{self.root}': {e.strerror or e}") from e
            return
        try:
            with open(cfg_path, encoding="utf-8") as f:
                have = json.load(f)
        except (OSError, ValueError) as e:
            raise FeatureStoreError(f"{cfg_path} is unreadable ({e}); delete the directory {self.path} to start it again") from e
        if have.get("format") != FORMAT or have.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(
                f"{self.path} was written by another visclust store format ({have.get('format')} "
                f"v{have.get('format_version')}); delete it or use another --store directory")
        if have.get("backbone") != want["backbone"] or have.get("decoder") != want["decoder"]:
            raise FeatureStoreError(
                f"{cfg_path} describes other features than {self.config.name} with these weights and "
                "preprocessing (edited or copied directory?); delete it or use another --store directory")
        os.makedirs(self.shards_dir, exist_ok=True)

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Pick up shards committed since the last look (by this or another process)."""
        if self._index is None:
            self._index = {}
        try:
            names = sorted(n[:-5] for n in os.listdir(self.shards_dir) if n.endswith(".json") and not n.startswith("."))
        except OSError as e:
            raise FeatureStoreError(f"cannot list feature store shards in {self.shards_dir}: {e.strerror or e}") from e
        for name in names:  # names start with the commit time: later shards win
            if name in self._seen:
                continue
            self._seen.add(name)
            shard = self._load_manifest(name)
            if shard is None:
                continue
            k = len(self._shards)
            self._shards.append(shard)
            for r, (p, s, m) in enumerate(zip(shard.paths, shard.sizes, shard.mtimes)):
                self._index[p] = _Row(k, r, s, m)

    def _load_manifest(self, name: str) -> Shard | None:
        mpath = os.path.join(self.shards_dir, name + ".json")
        try:
            with open(mpath, encoding="utf-8") as f:
                m = json.load(f)
            n = int(m["rows"])
            feats = m.get("features")
            fpath = os.path.join(self.shards_dir, feats) if feats else None
            if n and (fpath is None or os.path.basename(feats) != feats):
                raise ValueError("bad features file name")
            if not (len(m["paths"]) == len(m["sizes"]) == len(m["mtime_ns"]) == n):
                raise ValueError("row lists of different lengths")
            if m["dim"] != self.config.feature_dim or m["dtype"] not in DTYPES:
                raise ValueError(f"dim {m['dim']} / dtype {m['dtype']} do not fit this store")
            if n:
                arr = np.load(fpath, mmap_mode="r", allow_pickle=False)
                if arr.shape != (n, self.config.feature_dim) or arr.dtype.name != m["dtype"]:
                    raise ValueError(f"features file holds {arr.shape} {arr.dtype}, manifest says ({n}, {m['dim']}) {m['dtype']}")
            skipped = [(str(p), int(s), int(t), str(r)) for p, s, t, r in m.get("skipped", [])]
            return Shard(name, fpath, [str(p) for p in m["paths"]], [int(s) for s in m["sizes"]],
                         [int(t) for t in m["mtime_ns"]], m["dtype"], skipped)
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"feature store shard {mpath} is unreadable ({e}); its rows will be recomputed "
                          "(delete the shard's .json and .npy to silence this)", stacklevel=3)
            return None

    def shards(self) -> list[Shard]:
        """Every committed shard, oldest first. ``shard.load()`` memory-maps its features.

        Rows of a file recomputed later (edited file, concurrent writers) also appear in
        an older shard; :meth:`iter_rows` yields each file's current row once.
        """
        self.refresh()
        return list(self._shards)

    def iter_rows(self, mmap: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(paths, features)`` per shard, each file's latest row once, without
        stat'ing files: the memory-map-friendly way to read every row in the store."""
        self.refresh()
        for k, shard in enumerate(self._shards):
            if not len(shard):
                continue
            keep = [r for r, p in enumerate(shard.paths) if (ix := self._index.get(p)) is not None
                    and ix.shard == k and ix.row == r]
            if not keep:
                continue
            X = shard.load(mmap)
            if len(keep) == len(shard):
                yield shard.paths, X
            else:
                yield [shard.paths[r] for r in keep], X[np.asarray(keep)]

    def __len__(self) -> int:
        self.refresh()
        return len(self._index)

    def lookup(self, paths: Sequence[str], stats: Sequence[FileStat | None] | None = None) -> list[_Row | None]:
        """The current row of each path, or None (absent, or the file changed since).

        ``stats``: each path's :func:`file_stat` when the caller already has it (a parallel
        lister), so the files are not stat'ed again here."""
        self.refresh()
        out: list[_Row | None] = []
        for i, p in enumerate(paths):
            row = self._index.get(os.path.abspath(p))
            if row is not None and (file_stat(p) if stats is None else stats[i]) != (row.size, row.mtime):
                row = None
            out.append(row)
        return out

    def missing(self, paths: Sequence[str], stats: Sequence[FileStat | None] | None = None) -> list[int]:
        """Indices of ``paths`` with no current row: what an extraction must compute."""
        return [i for i, r in enumerate(self.lookup(paths, stats)) if r is None]

    def read(self, paths: Sequence[str], dtype=np.float32) -> tuple[np.ndarray, list[int], list[int]]:
        """Features of ``paths`` in the order given.

        Returns
        -------
        features : ndarray (n_found, feature_dim)
        found : list of int
            Index in ``paths`` of each returned row.
        absent : list of int
            Indices of ``paths`` the store has no current row for.
        """
        rows = self.lookup(paths)
        found = [i for i, r in enumerate(rows) if r is not None]
        absent = [i for i, r in enumerate(rows) if r is None]
        X = np.empty((len(found), self.config.feature_dim), dtype=dtype)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for out_row, i in enumerate(found):
            dst, src = by_shard.setdefault(rows[i].shard, ([], []))
            dst.append(out_row)
            src.append(rows[i].row)
        for k, (dst, src) in by_shard.items():
            X[np.asarray(dst)] = self._shards[k].load(mmap=True)[np.asarray(src)]
        return X, found, absent

    def skipped(self, paths: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """``(path, reason)`` of files the store could not read and still has no row for
        (limited to ``paths`` when given), latest reason per file."""
        self.refresh()
        latest: dict[str, tuple[int, str]] = {}
        for k, shard in enumerate(self._shards):
            for p, _s, _t, reason in shard.skipped:
                latest[p] = (k, reason)
        wanted = None if paths is None else {os.path.abspath(p) for p in paths}
        out = []
        for p, (k, reason) in latest.items():
            if wanted is not None and p not in wanted:
                continue
            if p in self._index and self._index[p].shard > k:
                continue  # read successfully since (fixed or replaced file)
            out.append((p, reason))
        return sorted(out)

    def write_skipped_csv(self) -> str:
        """Rewrite ``skipped.csv`` from the manifests (atomically); return its path."""
        from .io import write_csv_atomic

        out = os.path.join(self.path, "skipped.csv")
        write_csv_atomic(out, ("path", "reason"), self.skipped())
        return out

    # ------------------------------------------------------------------ writing
    def writer(self, dtype: str = "float32", shard_rows: int = 4096, flush_seconds: float = 30.0) -> "ShardWriter":
        """A writer that commits buffered rows as a new shard every ``shard_rows`` rows or
        ``flush_seconds`` seconds (whichever first) and on ``close()``."""
        return ShardWriter(self, check_dtype(dtype), shard_rows, flush_seconds)

    def remove_orphans(self) -> int:
        """Delete temporary files left by writers that no longer run (``kill -9``)."""
        removed = 0
        try:
            names = os.listdir(self.shards_dir)
        except OSError:
            return 0
        manifests = {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}
        for n in names:
            if n.startswith(".tmp-"):
                pid = _pid_of(n[5:])
            elif n.endswith(".npy") and n[:-4] not in manifests:
                pid = _pid_of(n)  # features renamed, manifest never written
            else:
                continue
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                try:
                    os.unlink(os.path.join(self.shards_dir, n))
                    removed += 1
                except OSError:
                    pass
        return removed

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, backbone={self.config.name!r})"


class ShardWriter:
    """Buffers rows and commits them as atomic shards. Use :meth:`FeatureStore.writer`."""

    def __init__(self, store: FeatureStore, dtype: str, shard_rows: int, flush_seconds: float):
        if shard_rows < 1:
            raise InputError(f"shard_rows must be at least 1, got {shard_rows}")
        self.store = store
        self.dtype = dtype
        self.shard_rows = int(shard_rows)
        self.flush_seconds = float(flush_seconds)
        self._feats: list[np.ndarray] = []
        self._files: list[tuple[str, int, int]] = []
        self._skipped: list[tuple[str, int, int, str]] = []
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self._committing: threading.Thread | None = None  # at most one shard in flight
        self._commit_error: tuple | None = None  # (error, rows) of a failed background commit
        store.remove_orphans()

    def add(self, paths: Sequence[str], stats: Sequence[FileStat], features: np.ndarray) -> None:
        """Buffer rows of ``paths`` (whose ``(size, mtime_ns)`` were taken *before* reading them)."""
        if len(paths) != len(features) or len(stats) != len(paths):
            raise ValueError("paths, stats and features differ in length")
        if len(paths):
            self._feats.append(np.asarray(features, dtype=self.dtype))
            self._files.extend((os.path.abspath(p), int(s[0]), int(s[1])) for p, s in zip(paths, stats))
        self._maybe_flush()

    def add_skipped(self, path: str, stat: FileStat | None, reason: str) -> None:
        s = stat or (-1, -1)
        self._skipped.append((os.path.abspath(path), int(s[0]), int(s[1]), str(reason)))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._files) >= self.shard_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(wait=False)

    def _wait(self) -> None:
        """Wait for the shard in flight; raise its error, if any."""
        if self._committing is not None:
            self._committing.join()
            self._committing = None
        if self._commit_error is not None:
            (e, job), self._commit_error = self._commit_error, None
            self._restore(job)
            raise e

    def _restore(self, job) -> None:
        """Put the rows of a shard that failed to commit back in front of the buffer (a
        later flush writes them again)."""
        self._feats, self._files, self._skipped = (job[0] + self._feats, job[1] + self._files,
                                                   job[2] + self._skipped)

    def flush(self, wait: bool = True) -> None:
        """Commit everything buffered as one shard (no-op when nothing is buffered).

        With ``wait=False`` the shard is written (save, fsync, manifest) by a background
        thread while the caller goes on computing; the next flush waits for it first, so at
        most one shard is in flight and shards commit in order. A shard is committed only
        once its manifest exists, in the background as in the foreground: ``kill -9`` in
        the middle loses it whole, never half.
        """
        self._last_flush = time.monotonic()
        self._wait()
        if not self._files and not self._skipped:
            return
        job = (self._feats, self._files, self._skipped)
        self._feats, self._files, self._skipped = [], [], []
        if wait:
            try:
                self._commit(*job)
            except BaseException:
                self._restore(job)
                raise
            return

        def run():
            try:
                self._commit(*job)
            except BaseException as e:  # raised in the caller's thread by the next flush or close
                self._commit_error = (e, job)

        self._committing = threading.Thread(target=run, name="visclust-store-commit", daemon=True)
        _start_deferring_ctrl_c(self._committing)

    def _commit(self, feats, files, skipped) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        d = self.store.shards_dir
        n = len(files)
        manifest = {
            "format": FORMAT + "-shard", "format_version": FORMAT_VERSION, "rows": n,
            "dim": self.store.config.feature_dim, "dtype": self.dtype,
            "features": f"{name}.npy" if n else None,
            "paths": [f[0] for f in files], "sizes": [f[1] for f in files],
            "mtime_ns": [f[2] for f in files], "skipped": [list(s) for s in skipped],
        }
        tmp, npy, man = (os.path.join(d, f".tmp-{name}.npy"), os.path.join(d, f"{name}.npy"),
                         os.path.join(d, f"{name}.json"))
        try:
            if n:
                X = np.concatenate(feats) if len(feats) > 1 else feats[0]
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(X, dtype=self.dtype), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, npy)
            # The manifest last: once it exists the shard is committed.
            _write_atomic(man, json.dumps(manifest).encode(), tmp_name=f".tmp-{name}.json")
        except BaseException as e:
            # Interrupted (Ctrl-C, a full disk) before the manifest: this shard was never
            # committed, so its files go; nothing committed before is touched.
            for leftover in (tmp,) if os.path.exists(man) else (tmp, npy):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            if isinstance(e, OSError):
                raise FeatureStoreError(f"cannot write to feature store {d}: {e.strerror or e}; "
                                        "rows committed before this are kept") from e
            raise
        self.rows_written += n

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error or Ctrl-C, keep what was computed: commit the buffer.
        self.close()


def _start_deferring_ctrl_c(thread: threading.Thread) -> None:
    """``thread.start()``, with a Ctrl-C that arrives meanwhile raised only once the thread
    has started. ``Thread.start`` waits for the new thread to begin; a KeyboardInterrupt
    inside that wait left a thread that may never be joined ("cannot join thread before it
    is started" at the writer's close, seen in CI), or one that never ran, losing its shard.
    Only the main thread receives Ctrl-C, so elsewhere this is a plain ``start()``."""
    if threading.current_thread() is not threading.main_thread():
        thread.start()
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    except (ValueError, OSError):  # e.g. not the main interpreter: no handler can be set
        thread.start()
        return
    try:
        thread.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, caught[0])
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _write_atomic(path: str, data: bytes, tmp_name: str | None = None) -> None:
    d = os.path.dirname(path)
    tmp = os.path.join(d, tmp_name or f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
