"""Feature extraction on a Ray cluster (Ray Data), into the same feature store.

:func:`compute_features_ray` does what :func:`visclust.features.compute_features` does,
spread over a Ray cluster:

* the driver opens the :class:`~visclust.store.FeatureStore` and lists the files with no
  current row (``store.missing``), exactly as the single-process engine does;
* those paths become a Ray dataset (``ray.data.from_items``, one block per batch, read by
  tasks on every node) mapped with ``map_batches`` by an **actor pool**: each actor builds
  the backbone once from a :class:`BackboneSpec` (registry name + weights file, never a
  pickled network), decodes its images with visclust's own decoder
  (:func:`visclust.features.resize_crop` through ``_decode_one``) and runs the engine
  (ONNX Runtime or PyTorch on CPU, PyTorch on a GPU when the cluster has GPUs: one GPU per
  actor);
* the driver streams the results (``iter_batches``) into the store with the same
  :class:`~visclust.store.ShardWriter`: ``fit --store`` cannot tell which engine made the
  rows.

Failures: an unreadable image is a skipped row with its reason, as with the local engine.
A worker process that dies (OOM kill, segfault, lost node) has its actor restarted and its
batch re-run by Ray (``max_restarts`` / ``max_task_retries``); the driver keeps one result
per input (a batch re-run after it was partly delivered cannot duplicate rows) and checks
that none is missing. Rows are committed as they arrive, so an interrupted run keeps its
work and the next run computes only the rest.

Ray is the optional extra ``visclust[distributed]``; importing visclust never imports it.
Every node needs visclust installed and the images (and ``--weights`` file) at the same
paths (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .backbones import BackboneConfig, Preprocess, create_backbone
from .engines import check_engine
from .exceptions import DistributedExtractionError, InputError, MissingDependencyError, VisclustError
from .features import (COMPILED_RESIZE_MIN_IMAGES, ExtractStats, _decode_one, _failure, _progress_bar, _stat,
                       backbone_at_size, check_input_size, open_store, small_image_backbone, with_preprocess)
from .io import _unseen, expand_input, no_images_error, walk_image_groups
from .store import file_stat

#: Test-only fault injection: when set to a file path, the first actor batch that manages to
#: create that file kills its own worker process (``os._exit``), as an OOM kill would.
CRASH_ONCE_ENV = "VISCLUST_RAY_CRASH_ONCE"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone anywhere: what travels to Ray actors instead of a network.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``'torchvision/mobilenet_v2'``.
    weights : str, optional
        Local weights file; must exist at this path on every node.
    pretrained : bool, default True
        False (and no ``weights``): random weights drawn with ``seed`` (testing plumbing).
    seed : int, default 0
    preprocess : dict, optional
        The preprocessing to use instead of the backbone's own (``Preprocess.to_dict()``),
        e.g. another input size: see :meth:`at`.
    """

    name: str
    weights: str | None = None
    pretrained: bool = True
    seed: int = 0
    preprocess: dict | None = None

    def at(self, backbone) -> "BackboneSpec":
        """This spec with ``backbone``'s preprocessing (a :func:`~visclust.features.backbone_at_size`
        or :func:`~visclust.features.small_image_backbone` of this spec's backbone)."""
        return replace(self, preprocess=backbone.preprocess.to_dict())

    def build(self, expect: BackboneConfig | None = None):
        """The backbone; with ``expect``, check it is the one the store's rows belong to."""
        backbone = create_backbone(self.name, weights=self.weights, pretrained=self.pretrained, seed=self.seed)
        if self.preprocess is not None:
            backbone = with_preprocess(backbone, Preprocess.from_dict(self.preprocess))
        if expect is not None and backbone.config != expect:
            raise InputError(f"the backbone built on this Ray node ({backbone.config.name}, weights "
                             f"{backbone.config.weights_sha256[:12]}) differs from the driver's "
                             f"({expect.name}, weights {expect.weights_sha256[:12]}); give every node the "
                             "same weights file and visclust version")
        return backbone


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("distributed extraction needs Ray Data: pip install 'visclust[distributed]' "
                                     "(or run without --executor ray)") from e
    return ray


class _ExtractActor:
    """One Ray actor: one backbone + engine, decodes and embeds the batches it is given.

    ``__call__`` maps ``{'index', 'path'}`` to ``{'index', 'ok', 'size', 'mtime_ns',
    'features', 'error', 'engine'}``, one output row per input row.
    """

    def __init__(self, spec: BackboneSpec, expect: dict, engine: str, device: str, threads: int,
                 crash_marker: str | None = None, compiled_resize: bool = True):
        import torch

        from .engines import create_engine

        torch.set_num_threads(max(1, threads))
        backbone = spec.build(BackboneConfig.from_dict(expect))
        self.pre = backbone.preprocess
        self.dim = backbone.feature_dim
        self.engine = create_engine(backbone, engine, device, threads=threads)
        self.threads = threads
        self.crash_marker = crash_marker
        self.compiled_resize = compiled_resize  # see features.COMPILED_RESIZE_MIN_IMAGES
        self._pool = None
        if threads > 1 and device != "cpu":
            # A GPU actor decodes with threads (PIL releases the GIL) so the GPU is not starved.
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads)

    def _maybe_crash(self) -> None:
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)  # as abrupt as an OOM kill: no cleanup, no exception

    def __call__(self, batch: dict) -> dict:
        self._maybe_crash()
        paths = [str(p) for p in batch["path"]]
        n = len(paths)
        s = self.pre.input_size
        images = np.empty((n, s, s, 3), dtype=np.uint8)
        ok = np.zeros(n, dtype=bool)
        sizes = np.full(n, -1, dtype=np.int64)
        mtimes = np.full(n, -1, dtype=np.int64)
        errors = [""] * n

        def decode(j: int) -> None:
            try:
                st = _decode_one(paths[j], self.pre, images[j], self.compiled_resize)
                ok[j] = True
            except Exception as e:
                errors[j] = _failure(paths[j], e)
                st = _stat(paths[j])
            if st is not None:
                sizes[j], mtimes[j] = st

        if self._pool is not None:
            list(self._pool.map(decode, range(n)))
        else:
            for j in range(n):
                decode(j)
        feats = np.zeros((n, self.dim), dtype=np.float32)
        if ok.any():
            feats[ok] = self.engine(images[ok])
        return {"index": np.asarray(batch["index"], dtype=np.int64), "ok": ok, "size": sizes, "mtime_ns": mtimes,
                "features": feats, "error": np.asarray(errors, dtype=object),
                "engine": np.asarray([self.engine.name] * n, dtype=object)}


def _connect(ray, address: str | None, num_cpus: int | None, object_store_memory: int | None, quiet: bool) -> bool:
    """Connect to ``address`` or start a local instance; True when this call did ray.init."""
    if ray.is_initialized():
        return False  # the caller's own Ray session: use it, leave it running
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": a new instance, never one found in /tmp/ray that another user started
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                     include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("check the address (`ray status` on the head node prints it, e.g. 10.0.0.1:6379)" if address
                else "check free memory and /tmp space, or start one with `ray start --head` and pass --ray-address")
        raise DistributedExtractionError(f"cannot start or reach {where}: {first}; {hint}") from e
    return True


def _list_subtree(root: str, entered: frozenset) -> list[tuple[tuple[int, int] | None, list[tuple[str, object]]]]:
    """Ray task: the image groups under ``root`` (:func:`visclust.io.walk_image_groups`),
    each file with its ``(size, mtime_ns)``, stat'ed here rather than on the driver."""
    return [(key, [(f, file_stat(f)) for f in files]) for key, files in walk_image_groups(root, set(entered))]


def list_inputs_ray(inputs: Sequence[str], cpus_per_task: float = 0.5) -> tuple[list[str], list]:
    """:func:`visclust.io.collect_inputs` with the directory walking and stat'ing spread
    over the Ray cluster this process is connected to.

    Each input directory is read one level deep by the driver; every subdirectory it would
    enter becomes one Ray task that walks that subtree and stats its files. The driver merges
    the results in the serial walk's order and drops a directory already listed (the same
    directory reached again through a symlink), so the list equals ``collect_inputs``'s. List
    files and single files are expanded on the driver.

    Returns ``(paths, stats)``: ``stats[i]`` is ``(size, mtime_ns)`` of ``paths[i]`` or None,
    what :meth:`FeatureStore.missing` compares with (so the driver does not stat every file
    again).
    """
    ray = _import_ray()
    walk = ray.remote(num_cpus=cpus_per_task, max_retries=3)(_list_subtree)
    paths: list[str] = []
    stats: list = []
    seen: set[str] = set()

    def add(p: str, st) -> None:
        if p not in seen:
            seen.add(p)
            paths.append(p)
            stats.append(st)

    for item in inputs:
        p = os.fspath(item)
        if not os.path.isdir(p):
            for f in expand_input(p):
                add(f, file_stat(f))
            continue
        entered: set = set()
        if not _unseen(p, entered):
            continue
        top = walk_image_groups(p, entered, max_depth=0)
        groups = []
        try:
            while True:
                key, files = next(top)
                groups.append((key, [(f, file_stat(f)) for f in files]))
        except StopIteration as stop:
            subdirs = stop.value or []
        refs = [walk.remote(d, frozenset(entered)) for d in subdirs]
        listed = set()
        for key, files in groups + [g for part in ray.get(refs) for g in part]:
            if key in listed:
                continue  # reached again through a symlink: the serial walk does not enter it twice
            listed.add(key)
            for f, st in files:
                add(f, st)
    if not paths:
        raise no_images_error(inputs)
    return paths, stats


def extract_ray(spec: BackboneSpec, inputs: Sequence[str], store, *, address: str | None = None,
                num_workers: int | None = None, cpus_per_worker: float | None = None,
                object_store_memory: int | None = None, quiet: bool = True, input_size="backbone",
                **kwargs) -> list[tuple[BackboneSpec, ExtractStats]]:
    """List ``inputs`` on the cluster (:func:`list_inputs_ray`), then
    :func:`compute_features_ray` the files the store has no current row for, in one Ray
    session. Keyword arguments are :func:`compute_features_ray`'s.

    ``input_size`` as in ``visclust extract``: ``'backbone'`` (its own size), an int (that
    size), or ``'auto'``: the backbone's size and, when the listed images are small, also the
    smaller size that ``fit`` compares (:func:`~visclust.features.small_image_backbone`,
    decided on the driver from a sample of the files). Returns ``(spec, stats)`` per size.
    """
    ray = _import_ray()
    size = check_input_size(input_size)
    for p in inputs:  # a missing input fails before a Ray instance is started
        if not os.path.lexists(os.fspath(p)):
            expand_input(os.fspath(p))  # raises its InputError
    base = spec.build()  # once on the driver (loading and hashing big weights takes seconds)
    views = [(spec, base)]
    if isinstance(size, int):  # a size the network cannot run at fails before Ray starts
        at = backbone_at_size(base, size)
        views = [(spec.at(at), at)]
    started = _connect(ray, address, _local_cpus(num_workers, cpus_per_worker), object_store_memory, quiet)
    try:
        try:
            paths, stats = list_inputs_ray(inputs)
        except VisclustError:
            raise
        except Exception as e:  # a listing task failed more than its retries
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DistributedExtractionError(f"listing the inputs on the Ray cluster failed: {first}; every node "
                                             "must see the images at the same paths") from e
        if size == "auto":
            small = small_image_backbone(base, paths)
            views += [(spec.at(small), small)] if small is not None else []
        return [(s, compute_features_ray(s, paths, store, stats=stats, num_workers=num_workers,
                                         cpus_per_worker=cpus_per_worker, quiet=quiet, backbone=bb, **kwargs))
                for s, bb in views]
    finally:
        if started:
            ray.shutdown()


def _local_cpus(num_workers: int | None, cpus_per_worker: float | None) -> int | None:
    """CPUs for a local instance: what the requested actors need (default: all of them)."""
    return None if num_workers is None else int(np.ceil(num_workers * (cpus_per_worker or 1)))


def _plan(ray, device: str | None, num_workers: int | None,
          cpus_per_worker: float | None) -> tuple[int, float, float, str]:
    """(actors, CPUs per actor, GPUs per actor, device) from what the cluster has."""
    if device not in (None, "auto", "cpu", "cuda"):
        raise InputError(f"with --executor ray, --device must be cpu, cuda or auto (each actor gets its own GPU), "
                         f"got {device!r}")
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    if device == "cuda" and gpus == 0:
        raise InputError("--device cuda but the Ray cluster has no GPUs; use --device cpu or auto")
    if gpus > 0 and device != "cpu":
        # A GPU actor decodes its own images: give it the CPUs its node has per GPU, less one
        # (the smallest such share over GPU nodes, so every actor fits on any of them).
        shares = [int(r.get("CPU", 0) // r["GPU"]) for r in (nd.get("Resources", {}) for nd in ray.nodes()
                                                              if nd.get("Alive", True)) if r.get("GPU", 0) >= 1]
        return num_workers or gpus, cpus_per_worker or float(max(1, min(shares or [2]) - 1)), 1.0, "cuda"
    per = cpus_per_worker or 1.0
    return (num_workers or max(1, int(cpus // per))), per, 0.0, "cpu"


def _unwrap(e: BaseException) -> BaseException | None:
    """The visclust error inside a Ray error chain, if any."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, VisclustError):
            return x
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])
    return None


def compute_features_ray(spec: BackboneSpec, paths: Sequence[str], store, *, address: str | None = None,
                         num_workers: int | None = None, cpus_per_worker: float | None = None, batch_size: int = 64,
                         engine: str = "auto", device: str | None = None, dtype: str = "float32",
                         shard_rows: int = 4096, flush_seconds: float = 30.0, progress: bool | None = None,
                         max_retries: int = 3, object_store_memory: int | None = None,
                         quiet: bool = True, stats: Sequence | None = None, backbone=None) -> ExtractStats:
    """Compute into ``store`` the features of the ``paths`` it has no current row for, on Ray.

    Parameters
    ----------
    spec : BackboneSpec
        The backbone, rebuilt by every actor (so the weights file must exist on every node).
    paths : sequence of str
        Image files, visible at these paths on every node.
    store : str, path or FeatureStore
        The same store the single-process engine writes (``decoder='pil'`` rows).
    address : str, optional
        Ray cluster to connect to (``host:port`` or ``ray://host:10001``); default
        ``$RAY_ADDRESS``, else a local instance started for this call and stopped after it.
        When this process is already connected (``ray.is_initialized()``) that session is
        used and left running.
    num_workers : int, optional
        Actors (= model copies). Default: one per GPU when the cluster has GPUs, else one
        per ``cpus_per_worker`` CPUs of the cluster.
    cpus_per_worker : float, optional
        CPUs reserved per actor; also its engine's threads (and, on a GPU, its decoding
        threads). Default 1 on CPU; on GPUs, the cluster's CPUs per GPU less one.
    batch_size : int, default 64
        Images per actor call; also the unit Ray re-runs when a worker dies.
    engine : {'auto', 'torch', 'onnx'}, default 'auto'
        The model runtime inside each actor (see :func:`visclust.engines.create_engine`).
    device : {'auto', 'cpu', 'cuda'}, optional
        ``'cpu'`` keeps GPUs unused; default one GPU per actor when the cluster has GPUs.
    dtype, shard_rows, flush_seconds, progress
        As in :func:`visclust.features.compute_features`.
    max_retries : int, default 3
        Times a dead actor is restarted and its batch re-run before the run fails.
    object_store_memory : int, optional
        Bytes of shared memory for a local instance's object store (Ray's default: 30%
        of RAM).
    quiet : bool, default True
        Keep Ray's own logging to warnings.
    stats : sequence, optional
        ``(size, mtime_ns)`` of each path when already known (:func:`list_inputs_ray`), so
        the driver does not stat every file again to find what is missing.
    backbone : Backbone, optional
        ``spec.build()`` when the caller already has it (the driver then does not load the
        weights again); every actor still builds its own and checks it against this one.

    Returns
    -------
    ExtractStats
        ``engine`` reads ``ray(<actors> x <engine>)``.

    Raises
    ------
    MissingDependencyError
        Ray is not installed (``pip install 'visclust[distributed]'``).
    DistributedExtractionError
        The cluster cannot be reached, or a batch failed more than ``max_retries`` times.

    Examples
    --------
    >>> spec = BackboneSpec("torchvision/mobilenet_v2", weights="mnv2.safetensors")   # doctest: +SKIP
    >>> stats = compute_features_ray(spec, paths, "features/", num_workers=4)           # doctest: +SKIP
    """
    from .store import check_dtype

    check_dtype(dtype)
    check_engine(engine)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if num_workers is not None and num_workers < 1:
        raise InputError(f"--workers must be at least 1 with --executor ray, got {num_workers}")
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise InputError(f"cpus per worker must be positive, got {cpus_per_worker}")
    if max_retries < 0:
        raise InputError(f"max_retries must be 0 or more, got {max_retries}")
    ray = _import_ray()
    t0 = time.perf_counter()
    paths = list(paths)
    backbone = spec.build() if backbone is None else backbone
    store = open_store(store, backbone, "pil")
    todo = store.missing(paths, stats)
    n_cached = len(paths) - len(todo)
    if not todo:
        return ExtractStats(len(paths), n_cached, 0, [], time.perf_counter() - t0, "none", store.path)
    started = _connect(ray, address, _local_cpus(num_workers, cpus_per_worker), object_store_memory, quiet)
    skipped: list[tuple[str, str]] = []
    engine_name = "none"
    bar = saved_ctx = None
    try:
        n_actors, cpus_per_actor, gpus, dev = _plan(ray, device, num_workers, cpus_per_worker)
        ctx = ray.data.DataContext.get_current()
        saved_ctx = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start",
                                                  "max_consecutive_actor_init_deaths")}
        ray_data_log = logging.getLogger("ray.data")
        saved_level = ray_data_log.level
        ctx.enable_progress_bars = False  # the driver shows its own bar (images, not blocks)
        ctx.print_on_execution_start = not quiet
        # An actor that cannot even start (weights missing on a node) fails the run fast.
        ctx.max_consecutive_actor_init_deaths = max(1, max_retries)
        if quiet:
            ray_data_log.setLevel(logging.ERROR)
        # each actor loads numba for the compiled resize only if its share of images pays for it
        compiled = len(todo) / n_actors >= COMPILED_RESIZE_MIN_IMAGES
        items = [{"index": k, "path": paths[i]} for k, i in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
        ds = _map_batches(ds, _ExtractActor, max_retries, batch_size=batch_size, batch_format="numpy",
                          fn_constructor_kwargs=dict(spec=spec, expect=backbone.config.to_dict(), engine=engine,
                                                     device=dev, threads=max(1, int(cpus_per_actor)),
                                                     crash_marker=os.environ.get(CRASH_ONCE_ENV) or None,
                                                     compiled_resize=compiled),
                          compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cpus_per_actor,
                          num_gpus=gpus or None)
        done = np.zeros(len(todo), dtype=bool)
        bar = _progress_bar(len(todo), progress)
        with store.writer(dtype=dtype, shard_rows=shard_rows, flush_seconds=flush_seconds) as w:
            try:
                for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                    k = out["index"]
                    # A batch Ray re-ran after delivering part of it comes twice: keep one copy.
                    fresh = ~done[k] & _first_occurrence(k)
                    done[k[fresh]] = True
                    good = fresh & out["ok"]
                    if good.any():
                        sel = np.flatnonzero(good)
                        w.add([paths[todo[k[j]]] for j in sel],
                              [(int(out["size"][j]), int(out["mtime_ns"][j])) for j in sel], out["features"][sel])
                    for j in np.flatnonzero(fresh & ~out["ok"]):
                        p = paths[todo[k[j]]]
                        st = (int(out["size"][j]), int(out["mtime_ns"][j]))
                        msg = str(out["error"][j])
                        # As compute_features does: the store's column already names the file.
                        reason = msg[len(p) + 2:] if msg.startswith(f"{p}: ") else msg
                        w.add_skipped(p, None if st[0] < 0 else st, reason)
                        skipped.append((p, msg))
                    if len(k) and engine_name == "none":
                        engine_name = str(out["engine"][0])
                    if bar is not None:
                        bar.update(int(fresh.sum()))
            except Exception as e:
                inner = _unwrap(e)
                if inner is not None:
                    raise inner from e
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DistributedExtractionError(
                    f"distributed extraction failed ({type(e).__name__}: {first}); the rows computed so far are "
                    f"kept in {store.path}: run the same command again to compute the rest") from e
        lost = int((~done).sum())
        if lost:
            raise DistributedExtractionError(f"Ray returned no result for {lost} image(s); the other rows are kept in "
                                             f"{store.path}: run the same command again to compute the rest")
    finally:
        if bar is not None:
            bar.close()
        if saved_ctx is not None:  # a caller's own Ray session keeps its settings
            for key, value in saved_ctx.items():
                setattr(ctx, key, value)
            ray_data_log.setLevel(saved_level)
        if started:
            ray.shutdown()
    if skipped or store.skipped():
        store.write_skipped_csv()
    order = {p: i for i, p in enumerate(paths)}
    skipped.sort(key=lambda t: order.get(t[0], 0))
    return ExtractStats(len(paths), n_cached, w.rows_written, skipped, time.perf_counter() - t0,
                        f"ray({n_actors} x {engine_name})", store.path)


def _map_batches(ds, fn, max_retries: int, **kwargs):
    """``ds.map_batches`` with actor restarts and batch re-runs bounded by ``max_retries``.

    Ray Data's default is to retry forever, so one image that crashes its decoder every
    time would never let the run end. Ray 2.60 still takes ``max_restarts`` /
    ``max_task_retries`` as (deprecated) extra remote arguments; where a later Ray no
    longer does, its own default applies.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return ds.map_batches(fn, max_restarts=max_retries, max_task_retries=max_retries, **kwargs)
    except TypeError:
        return ds.map_batches(fn, **kwargs)


def _first_occurrence(k: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each value of ``k``."""
    first = np.zeros(len(k), dtype=bool)
    first[np.unique(k, return_index=True)[1]] = True
    return first
