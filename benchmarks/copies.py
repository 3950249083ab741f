"""How fast ``--augment`` writes its augmented copies (``visclust.augment.write_copies``), and
how large they are on disk: the way it wrote them before 2026-12-05 (night) (one process,
Pillow's default PNG level 6) against now (level 1, one process, then one worker process per
CPU), in one run, on the same images.

    VISCLUST_SHARED=../shared python benchmarks/copies.py                 # CIFAR-10 test + the shared photos
    python benchmarks/copies.py --folder DIR [--limit N] [--short-side 512]

``--short-side`` is what a fit passes: twice the backbone's resize size (512 for 256-resize
ImageNet backbones). The shared photos (8 of them, 512 px wide) are repeated to 256 images.
Each setting runs ``--repeats`` times, alternating; the best time is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import cifar_folder  # noqa: E402


def _time(paths, short_side, workers, level) -> tuple[float, list[int]]:
    import visclust.augment as A

    A.PNG_COMPRESS_LEVEL = level
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        out = A.write_copies(paths, d, 0, seed=0, short_side=short_side, progress=False, workers=workers)
        dt = time.perf_counter() - t
        sizes = sorted(os.path.getsize(q) for q in out if q)
    return dt, sizes


def run(name: str, paths: list[str], short_side: int | None, repeats: int) -> str:
    from visclust.augment import copy_workers

    nw = copy_workers()
    settings = [("before: 1 process, PNG level 6", 0, 6), ("PNG level 1, 1 process", 0, 1),
                (f"PNG level 1, {nw} worker processes (now)", nw, 1)]
    best = {s[0]: float("inf") for s in settings}
    sizes = {}
    for _ in range(repeats):
        for label, workers, level in settings:
            dt, sz = _time(paths, short_side, workers, level)
            best[label] = min(best[label], dt)
            sizes[label] = sz
    base = best[settings[0][0]]
    rows = [f"#### {name}: {len(paths)} images, short side at most {short_side or 'as is'}",
            "", "| how | time (s) | ms per copy | speed-up | median copy (KB) | largest (KB) |", "|---|---|---|---|---|---|"]
    for label, _, _ in settings:
        sz = sizes[label]
        rows.append(f"| {label} | {best[label]:.2f} | {1000 * best[label] / len(paths):.2f} | {base / best[label]:.2f}x "
                    f"| {sz[len(sz) // 2] / 1e3:.1f} | {sz[-1] / 1e3:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, help="a folder of images (default: CIFAR-10 test and the shared photos)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images of --folder")
    p.add_argument("--short-side", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("VISCLUST_BENCH_CACHE", "/tmp/visclust-bench")))
    args = p.parse_args(argv)
    import torch  # noqa: F401  (loaded before, as in a fit: the workers start from a process that holds it)

    from visclust.io import collect_inputs

    jobs = []
    if args.folder:
        jobs.append((str(args.folder), collect_inputs([str(args.folder)])[:args.limit]))
    else:
        jobs.append(("CIFAR-10 test (32 x 32 JPEGs)", collect_inputs([str(cifar_folder(args.cache))])[:args.limit]))
        shared = os.environ.get("VISCLUST_SHARED")
        if shared and (Path(shared) / "data" / "photos").is_dir():
            photos = collect_inputs([str(Path(shared) / "data" / "photos")])
            jobs.append(("the shared photos (8 photos 512 px wide, repeated)", (photos * (256 // len(photos) + 1))[:256]))
        else:
            print("VISCLUST_SHARED not set: the photos are left out", file=sys.stderr)
    print(f"<!-- python benchmarks/copies.py {' '.join(argv or sys.argv[1:])}; {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    for name, paths in jobs:
        print(run(name, paths, args.short_side, args.repeats), "\n", flush=True)


if __name__ == "__main__":
    main()
