"""clustimage on the same labelled folders as benchmarks/quality.py, for docs/benchmarks.md.

clustimage is not a visclust dependency: run this in its own environment so that nothing
it pulls can touch visclust's::

    python3 -m venv /tmp/clustimage-venv && /tmp/clustimage-venv/bin/pip install clustimage
    /tmp/clustimage-venv/bin/python benchmarks/clustimage_compare.py /tmp/visclust-bench/mnist-test

clustimage needs about 4.5 GB of memory for 2,000 images and did not finish 10,000 MNIST
images in 27 minutes (18 GB resident), so the comparison runs on random subsets, made as
class folders of symlinks (the same subset for visclust's ``benchmarks/quality.py
--datasets folder:DST``)::

    python benchmarks/clustimage_compare.py --subset 2000 SRC DST

Labels are the names of each image's parent folder and are used only to score. Prints ACC
(Hungarian), NMI, ARI and the wall time of ``fit_transform`` with K fixed to the true number
of classes (``min_clust = max_clust = K``) and, with ``--auto-k``, with clustimage's own
choice of K in 3..25.

clustimage's thumbnail cache is turned off (its only change from the defaults): clustimage
1.7.1 keys it by file name alone, in one folder for all runs, so folders such as CIFAR-10's
``<class>/0000.jpg`` were read as a tenth of their images. Results before 2026-12-06 were
measured with it on and are wrong for every folder whose file names repeat.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def acc(y, p) -> float:
    classes, yi = np.unique(y, return_inverse=True)
    clusters, pi = np.unique(p, return_inverse=True)
    C = np.zeros((len(clusters), len(classes)))
    np.add.at(C, (pi, yi), 1)
    r, c = linear_sum_assignment(-C)
    return C[r, c].sum() / len(y)


def images(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder, followlinks=True) for f in fs
                  if f.lower().endswith((".png", ".jpg", ".jpeg")))


def make_subset(src: str, dst: str, n: int) -> int:
    paths = images(src)
    if os.path.exists(dst):
        sys.exit(f"error: {dst} exists; choose a new folder for the subset")
    for i in np.random.default_rng(0).choice(len(paths), min(n, len(paths)), replace=False):
        link = os.path.join(dst, os.path.relpath(paths[i], src))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(paths[i]), link)
    print(f"{dst}: {min(n, len(paths))} of {len(paths)} images")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="+", help="labelled folder (or, with --subset, SRC DST)")
    ap.add_argument("--subset", type=int, metavar="N",
                    help="make DST: N images drawn from SRC (numpy default_rng(0), sorted paths) as symlinks")
    ap.add_argument("--method", default="pca", help="clustimage feature method (default pca, its default)")
    ap.add_argument("--auto-k", action="store_true")
    args = ap.parse_args(argv)
    if args.subset:
        return make_subset(*args.folder, args.subset)
    from clustimage import Clustimage

    folder = args.folder[0]
    paths = images(folder)
    truth = {p: os.path.basename(os.path.dirname(p)) for p in paths}
    k = len(set(truth.values()))
    runs = [("K = true K", k, k)] + ([("K chosen by clustimage (3..25)", 3, 25)] if args.auto_k else [])
    for name, lo, hi in runs:
        # clustimage's thumbnail cache (on by default) names a thumbnail by the image's file name
        # alone, in one folder shared by every run: cat/0001.jpg and dog/0001.jpg, or two
        # collections' 0001.png, are then read as one image. Off, each file is read itself.
        cl = Clustimage(method=args.method, verbose=50, use_thumbnail_cache=False)
        t0 = time.perf_counter()
        res = cl.fit_transform(paths, min_clust=lo, max_clust=hi)
        secs = time.perf_counter() - t0
        got = [os.path.abspath(p) for p in res["pathnames"]]
        y = np.array([truth[os.path.abspath(p)] if os.path.abspath(p) in truth else truth[p] for p in got])
        lab = np.asarray(res["labels"])
        print(f"| clustimage {args.method}, {name} | {folder} | n={len(lab)} K={len(np.unique(lab))} | "
              f"ACC {acc(y, lab):.3f} | NMI {normalized_mutual_info_score(y, lab):.3f} | "
              f"ARI {adjusted_rand_score(y, lab):.3f} | {secs:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
