"""The classifier step's two linear SVM solvers on real features: liblinear (``LinearSVC``,
one one-vs-rest problem per class in turn) and ``visclust.classify.ovr_squared_hinge`` (the
same objective, every class at once by L-BFGS on matrix products). For K pseudo-labels from
K-means in the default's PCA-64 space, each solver trains on ``n`` rows and is scored by its
agreement with the K-means labels on 10,000 held-out rows (the fit's own label-free test).
This set ``classify.TORCH_SVM_MIN_CLASSES``.

    VISCLUST_SHARED=../shared python benchmarks/svm_solvers.py --folder /tmp/cifar10-train/train
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import image_features  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True, help="images (CIFAR-10 train: 50,000 JPEGs)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--rows", type=int, nargs="+", default=[16_000, 33_000])
    p.add_argument("--clusters", type=int, nargs="+", default=[10, 20, 40, 100])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("VISCLUST_BENCH_CACHE", "/tmp/visclust-bench")))
    args = p.parse_args(argv)
    from sklearn.cluster import KMeans
    from sklearn.svm import LinearSVC

    from visclust.classify import ovr_squared_hinge
    from visclust.reduce import Reducer

    warnings.simplefilter("ignore")  # liblinear's ConvergenceWarning, as in the fit
    X, _, _ = image_features(args.folder, args.cache, input_size=args.input_size)
    Z = Reducer(64).fit_transform(X)
    ovr_squared_hinge(Z[:100], np.arange(100) % 3, 3)  # torch's first call pays its start-up
    perm = np.random.default_rng(0).permutation(len(Z))
    print(f"<!-- python benchmarks/svm_solvers.py --folder {args.folder}; {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| rows | K | liblinear (s) | held-out agreement | all classes at once (s) | held-out agreement |")
    print("|---|---|---|---|---|---|")
    for n in args.rows:
        tr, te = perm[:n], perm[n:n + 10_000]
        for k in args.clusters:
            y = KMeans(k, n_init=1, random_state=0).fit_predict(Z)
            t = time.perf_counter()
            svm = LinearSVC(C=1.0, class_weight="balanced", max_iter=2000).fit(Z[tr], y[tr])
            a = time.perf_counter() - t
            t = time.perf_counter()
            coef, intercept = ovr_squared_hinge(Z[tr], y[tr], k)
            b = time.perf_counter() - t
            h1 = np.mean(svm.predict(Z[te]) == y[te])
            h2 = np.mean((Z[te] @ coef.T + intercept).argmax(1) == y[te])
            print(f"| {n:,} | {k} | {a:.2f} | {h1:.3f} | {b:.2f} | {h2:.3f} |", flush=True)


if __name__ == "__main__":
    main()
