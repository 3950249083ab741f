"""Feature extraction throughput: end to end (image files -> feature store) vs model only.

Both are measured in the same run, on the same engine, backbone and batch size: model-only
feeds random uint8 batches straight to the engine (no decoding, no store), before and
after the end-to-end pass, and the faster of the two is the baseline. The ratio
end-to-end / model-only says how well decoding hides behind the model.

Usage::

    python benchmarks/extract.py FOLDER --backbone torchvision/mobilenet_v2 --weights W.safetensors
    python benchmarks/extract.py FOLDER ... --quick            # 1,024 images, short model-only runs
    python benchmarks/extract.py FOLDER ... --sweep 0,1,2      # end to end per decoding-worker count
    python benchmarks/extract.py FOLDER ... --engine torch     # eager PyTorch instead of ONNX Runtime
    python benchmarks/extract.py FOLDER ... --compare-engines  # model-only of torch eager vs onnxruntime

Prints images/s, the ratio, the peak resident memory (main process and the largest decoding
worker) and the load average (other processes on the machine slow everything down).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np


def model_only(engine, batch_size: int, size: int, seconds: float, min_batches: int = 3) -> float:
    """Images/s of ``engine`` on random uint8 batches (after one warm-up batch)."""
    x = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    engine(x)
    n, t0 = 0, time.perf_counter()
    while n < min_batches or time.perf_counter() - t0 < seconds:
        engine(x)
        n += 1
    return n * batch_size / (time.perf_counter() - t0)


def end_to_end(backbone, engine, paths, batch_size: int, workers, shard_rows: int, dtype: str) -> tuple[float, object]:
    """Images/s from image files to committed store rows, into a fresh store."""
    from visclust.features import compute_features

    root = tempfile.mkdtemp(prefix="visclust-bench-store-")
    try:
        t0 = time.perf_counter()
        stats = compute_features(backbone, paths, root, batch_size=batch_size, num_workers=workers, engine=engine,
                                 progress=False, dtype=dtype, shard_rows=shard_rows)
        secs = time.perf_counter() - t0  # everything: stat, decode, model, store writes
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return stats.n_computed / secs, stats


def peak_rss_mib() -> tuple[float, float]:
    """(this process, largest finished child) peak RSS in MiB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def rounds(args, backbone, engine, paths, size, secs, workers) -> int:
    """Interleave model-only runs and end-to-end chunks (one store); per-round and overall ratios."""
    from visclust.features import compute_features

    root = tempfile.mkdtemp(prefix="visclust-bench-store-")
    chunks = np.array_split(np.arange(len(paths)), args.rounds)
    models = [model_only(engine, args.batch_size, size, secs)]
    e2e_secs, e2e_n, ratios = 0.0, 0, []
    try:
        for r, idx in enumerate(chunks):
            part = [paths[i] for i in idx]
            t0 = time.perf_counter()
            st = compute_features(backbone, part, root, batch_size=args.batch_size, num_workers=workers, engine=engine,
                                  progress=False, dtype=args.dtype)
            dt = time.perf_counter() - t0
            models.append(model_only(engine, args.batch_size, size, secs))
            e2e_secs, e2e_n = e2e_secs + dt, e2e_n + st.n_computed
            rate, base = st.n_computed / dt, max(models[-2], models[-1])
            ratios.append(rate / base)
            print(f"round {r}: model-only {models[-2]:.1f} / {models[-1]:.1f} img/s, end-to-end {rate:.1f} img/s "
                  f"({st.n_computed} images, {len(st.skipped)} skipped), ratio {rate / base:.3f}, "
                  f"load_avg={os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = e2e_n / e2e_secs
    rss_main, rss_child = peak_rss_mib()
    print(f"RESULT backbone={args.backbone} engine={engine.name} batch={args.batch_size} workers={workers} "
          f"images={e2e_n} end_to_end={rate:.1f} img/s model_only_mean={np.mean(models):.1f} img/s "
          f"(min {min(models):.1f}, max {max(models):.1f}) ratio_median={np.median(ratios):.3f} "
          f"ratio_overall={rate / np.mean(models):.3f}")
    print(f"peak RSS: main process {rss_main:.0f} MiB, largest decoding worker {rss_child:.0f} MiB; "
          f"load_avg={os.getloadavg()[0]:.2f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder of images (recursive)")
    ap.add_argument("--backbone", default="torchvision/mobilenet_v2")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: the library's default)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime / torch intra-op threads")
    ap.add_argument("--limit", type=int, default=None, help="use the first N images")
    ap.add_argument("--quick", action="store_true", help="1,024 images and 10 s model-only runs")
    ap.add_argument("--model-seconds", type=float, default=None, help="length of each model-only run (default 30, quick 10)")
    ap.add_argument("--sweep", default=None, metavar="W,W,...", help="end to end for each worker count")
    ap.add_argument("--compare-engines", action="store_true", help="also time torch eager model-only")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    ap.add_argument("--rounds", type=int, default=1,
                    help="split the images into R chunks, extracted one after the other into one store, with a "
                    "model-only run before each chunk and after the last: the load of other processes then "
                    "weighs on both sides of each ratio alike")
    args = ap.parse_args(argv)

    import torch

    from visclust.backbones import create_backbone
    from visclust.engines import create_engine
    from visclust.features import default_num_workers
    from visclust.io import collect_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = collect_inputs([args.folder])
    limit = args.limit or (1024 if args.quick else None)
    if limit and limit < len(paths):
        # spread over the whole folder (every class), in walk order
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    secs = args.model_seconds or (10.0 if args.quick else 30.0)
    backbone = create_backbone(args.backbone, weights=args.weights)
    engine = create_engine(backbone, args.engine, "cpu" if args.engine == "onnx" else None, threads=args.threads)
    size = backbone.preprocess.input_size
    workers = default_num_workers(getattr(engine, "device", None)) if args.workers is None else args.workers
    print(f"# {args.backbone} engine={engine!r} batch={args.batch_size} images={len(paths)} "
          f"cores={os.cpu_count()} torch_threads={torch.get_num_threads()} load_avg={os.getloadavg()[0]:.2f}")

    if args.compare_engines:
        from visclust.engines import TorchEngine

        eager = model_only(TorchEngine(backbone, "cpu", channels_last=False), args.batch_size, size, secs)
        cl = model_only(TorchEngine(backbone, "cpu", channels_last=True), args.batch_size, size, secs)
        ort_ = model_only(engine, args.batch_size, size, secs)
        print(f"model-only img/s: torch eager {eager:.1f}, torch channels_last {cl:.1f}, {engine.name} {ort_:.1f} "
              f"({ort_ / eager:.2f}x eager)")

    if args.rounds > 1:
        return rounds(args, backbone, engine, paths, size, secs, workers)
    before = model_only(engine, args.batch_size, size, secs)
    print(f"model-only (before): {before:.1f} img/s")
    sweep = [int(w) for w in args.sweep.split(",")] if args.sweep else [workers]
    results = []
    for w in sweep:
        rate, stats = end_to_end(backbone, engine, paths, args.batch_size, w, 4096, args.dtype)
        results.append((w, rate, stats))
        print(f"end-to-end workers={w}: {rate:.1f} img/s ({stats.n_computed} images in {stats.seconds:.1f} s, "
              f"{len(stats.skipped)} skipped) load_avg={os.getloadavg()[0]:.2f}")
    after = model_only(engine, args.batch_size, size, secs)
    print(f"model-only (after): {after:.1f} img/s")
    best_model = max(before, after)
    rss_main, rss_child = peak_rss_mib()
    for w, rate, stats in results:
        print(f"RESULT backbone={args.backbone} engine={engine.name} batch={args.batch_size} workers={w} "
              f"images={stats.n_computed} end_to_end={rate:.1f} img/s model_only={best_model:.1f} img/s "
              f"ratio={rate / best_model:.3f}")
    print(f"peak RSS: main process {rss_main:.0f} MiB, largest decoding worker {rss_child:.0f} MiB; "
          f"load_avg={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
