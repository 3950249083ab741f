"""Ray vs single-process feature extraction throughput, measured in one run on one machine.

Both write a fresh feature store from the same image files with the same backbone, engine
and batch size:

* **single process**: :func:`visclust.features.compute_features` (the library's default
  decoding workers), alternating with the Ray runs pair by pair (``--repeats``) so that a
  busy shared machine slows both alike; the ratio is reported per pair;
* **Ray, warm**: :func:`visclust.distributed.compute_features_ray` on a local Ray instance
  that is already running (what a job on a standing cluster sees: actor start, model build
  and engine load included, cluster start excluded);
* **Ray, cold**: the same, starting and stopping the local instance inside the timing (what
  ``visclust extract --engine ray`` on one machine costs).

The Ray store is checked against the single-process one (same paths, max abs difference).

Listing: on the warm instance, the whole folder is listed and every file stat'ed serially
(``collect_inputs`` + ``file_stat``, what the single-process engine does) and by
:func:`visclust.distributed.list_inputs_ray` (one Ray task per subdirectory), alternating,
and the two lists are checked equal. ``--listing-only`` measures just that.

Usage::

    python benchmarks/ray_extract.py FOLDER --weights W.safetensors            # 2,000 images
    python benchmarks/ray_extract.py FOLDER --weights W.safetensors --quick    # 256 images
    python benchmarks/ray_extract.py FOLDER ... --workers 4 --engine torch
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def _store_rows(root, config) -> dict:
    from visclust.store import FeatureStore

    store = FeatureStore(root, config)
    return {p: x for ps, X in store.iter_rows(mmap=False) for p, x in zip(ps, X)}


def run_single(backbone, paths, args, root) -> float:
    from visclust.features import compute_features

    t0 = time.perf_counter()
    stats = compute_features(backbone, paths, root, batch_size=args.batch_size, engine=args.engine, progress=False)
    secs = time.perf_counter() - t0
    assert stats.n_computed == len(paths), stats
    return secs


def run_ray(spec, paths, args, root) -> tuple[float, str]:
    from visclust.distributed import compute_features_ray

    t0 = time.perf_counter()
    stats = compute_features_ray(spec, paths, root, num_workers=args.workers, batch_size=args.batch_size,
                                 engine=args.engine, progress=False,
                                 object_store_memory=args.object_store_mb * 2**20)
    secs = time.perf_counter() - t0
    assert stats.n_computed == len(paths), stats
    return secs, stats.engine


def compare_listing(folder: str, repeats: int) -> None:
    from visclust.distributed import list_inputs_ray
    from visclust.io import collect_inputs
    from visclust.store import file_stat

    for r in range(repeats):
        t0 = time.perf_counter()
        paths = collect_inputs([folder])
        stats = [file_stat(p) for p in paths]
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        rpaths, rstats = list_inputs_ray([folder])
        on_ray = time.perf_counter() - t0
        assert (rpaths, rstats) == (paths, stats), "the Ray listing differs from the serial one"
        print(f"listing {len(paths)} files + stat: serial {serial:.2f} s, Ray tasks {on_ray:.2f} s "
              f"(Ray / serial time {on_ray / serial:.2f}); lists equal", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder of images (recursive)")
    ap.add_argument("--backbone", default="torchvision/mobilenet_v2")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--random-weights", action="store_true", help="no weights file (plumbing only)")
    ap.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (default %(default)s)")
    ap.add_argument("--limit", type=int, default=2000, help="images used (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="256 images")
    ap.add_argument("--object-store-mb", type=int, default=200, help="local Ray object store (default %(default)s MB)")
    ap.add_argument("--repeats", type=int, default=2, help="single/Ray pairs (default %(default)s)")
    ap.add_argument("--no-cold", action="store_true", help="skip the run that starts Ray inside the timing")
    ap.add_argument("--listing-only", action="store_true", help="only compare serial and Ray listing of the folder")
    args = ap.parse_args(argv)

    import ray

    from visclust.distributed import BackboneSpec
    from visclust.io import collect_inputs

    paths = collect_inputs([args.folder])
    n = 256 if args.quick else args.limit
    paths = paths[:: max(1, len(paths) // n)][:n]  # spread over the folder (every class of a labelled tree)
    spec = BackboneSpec(args.backbone, weights=args.weights, pretrained=not args.random_weights)
    backbone = spec.build()
    print(f"{len(paths)} images, {backbone.name}, engine {args.engine}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    tmp = tempfile.mkdtemp(prefix="visclust-bench-ray-")
    try:
        # Warm-up: ONNX export / engine caches, page cache of the images.
        run_single(backbone, paths[: args.batch_size], args, os.path.join(tmp, "warm"))

        # Single process and Ray alternate, pair by pair, so a busy machine slows both alike.
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, object_store_memory=args.object_store_mb * 2**20,
                 include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
        startup = time.perf_counter() - t0
        print(f"Ray start        : {startup:8.1f} s", flush=True)
        single, warm = [], []
        try:
            compare_listing(args.folder, args.repeats)
            for r in range(0 if args.listing_only else args.repeats):
                single.append(run_single(backbone, paths, args, os.path.join(tmp, f"single{r}")))
                print(f"single process   : {len(paths) / single[-1]:8.1f} img/s ({single[-1]:.1f} s)", flush=True)
                secs, engine = run_ray(spec, paths, args, os.path.join(tmp, f"ray{r}"))
                warm.append(secs)
                print(f"Ray, warm        : {len(paths) / secs:8.1f} img/s ({secs:.1f} s, {engine}); "
                      f"pair ratio {single[-1] / secs:.2f}", flush=True)
        finally:
            ray.shutdown()
        if args.listing_only:
            return 0
        cold = None
        if not args.no_cold:
            cold, _ = run_ray(spec, paths, args, os.path.join(tmp, "ray_cold"))
            print(f"Ray, cold        : {len(paths) / cold:8.1f} img/s ({cold:.1f} s incl. start/stop)", flush=True)

        a = _store_rows(os.path.join(tmp, "single0"), backbone.config)
        b = _store_rows(os.path.join(tmp, "ray0"), backbone.config)
        assert sorted(a) == sorted(b), "the Ray store holds other images than the single-process one"
        diff = max(float(np.abs(a[p] - b[p]).max()) for p in a)
        print(f"same {len(a)} rows; max |ray - single| = {diff:.2e}")
        ratios = [s_ / w for s_, w in zip(single, warm)]
        print(f"ratio Ray warm / single process, per pair: {', '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {float(np.median(ratios)):.2f})")
        if cold is not None:
            print(f"ratio Ray cold / median single process: {float(np.median(single)) / cold:.2f}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
