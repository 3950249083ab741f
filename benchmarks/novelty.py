"""Images unlike the training images (``predict --reject-novel``, ``FeatureClusterer.novelty``):
how many are flagged, among images like the training ones and among others.

    python benchmarks/novelty.py                                   # cifar10 mnist fashion-mnist emoji
    python benchmarks/novelty.py --datasets mnist cifar10 folder:/path/to/labelled/tree

For each collection, a default ``FeatureClusterer`` (K = the number of classes it sees) is
fitted on a random 80% of the images of the first half of its classes (sorted by name). Then
``novelty > 1`` is counted on the other 20% of those classes (like the training images: the
false rejections), on the collection's other classes (same kind, other groups) and on every
other collection named. Features come from the same cache as ``benchmarks/quality.py``.
Labels only pick the classes; nothing is tuned on them.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import load_dataset  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["cifar10", "mnist", "fashion-mnist", "emoji"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/visclust-bench"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    from visclust.model import NOVELTY_QUANTILE, FeatureClusterer

    data = {name: load_dataset(name, args.cache)[:2] for name in args.datasets}
    rng = np.random.default_rng(args.seed)
    print(f"threshold quantile {NOVELTY_QUANTILE}; share of images with novelty > 1 (flagged by --reject-novel)\n")
    print("| fitted on | rows | fit s | like the training images | its other classes | "
          + " | ".join(data) + " |")
    print("|---|---|---|---|---|" + "---|" * len(data))
    for name, (X, y) in data.items():
        classes = np.unique(y)[: len(np.unique(y)) // 2]
        idx = rng.permutation(np.flatnonzero(np.isin(y, classes)))
        n = int(0.8 * len(idx))
        t = time.perf_counter()
        fc = FeatureClusterer(len(classes), random_state=args.seed).fit(X[idx[:n]])
        fit_s = time.perf_counter() - t
        share = lambda A: f"{np.mean(fc.novelty(A) > 1):.3f}"  # noqa: E731
        others = [share(Xo) if o != name else "" for o, (Xo, _) in data.items()]
        print(f"| {name}, classes {', '.join(map(str, classes))} | {n} | {fit_s:.0f} | {share(X[idx[n:]])} | "
              f"{share(X[~np.isin(y, classes)])} | " + " | ".join(others) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
