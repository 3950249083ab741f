"""``FeatureClusterer(normalize=True|False)`` on low-dimensional points, beside scikit-learn's
K-means: L2-normalising 2-d or 3-d rows keeps only their direction, which merges groups
that lie in one direction from the centre. Prints a Markdown table of ARI per seed.

    python benchmarks/normalize.py [--seeds 3] [--dims 2 3]
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--centers", type=int, default=4)
    args = p.parse_args(argv)
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from visclust.model import FeatureClusterer

    print(f"<!-- python benchmarks/normalize.py --seeds {args.seeds} --dims {' '.join(map(str, args.dims))}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| points | seed | K-means (scikit-learn) | visclust, normalize=True (the default) | visclust, normalize=False |")
    print("|---|---|---|---|---|")
    for d in args.dims:
        for seed in range(args.seeds):
            X, y = make_blobs(args.n, n_features=d, centers=args.centers, random_state=seed)
            km = adjusted_rand_score(y, KMeans(args.centers, n_init=10, random_state=0).fit_predict(X))
            cells = []
            for norm in (True, False):
                t = time.perf_counter()
                fc = FeatureClusterer(args.centers, normalize=norm, random_state=0).fit(X)
                cells.append(f"{adjusted_rand_score(y, fc.labels_):.3f} ({fc.pipeline_}, {time.perf_counter() - t:.1f} s)")
            print(f"| make_blobs({args.n}, {d}-d, {args.centers} centres) | {seed} | {km:.3f} | {' | '.join(cells)} |",
                  flush=True)


if __name__ == "__main__":
    main()
