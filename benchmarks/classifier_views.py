"""The classifier step trained on other features of the same images than the clustering's:
``FeatureClusterer.fit(X, classifier_features=F)`` / ``train_classifier_on(F)``.

For every labelled collection, each view a default ``ImageClusterer`` fit may cluster (the
backbone at its own input size, at 4x the images' size, each with the raw pixels beside) is
clustered by the default ``FeatureClusterer``; its classifier step is then trained once on the
same view (what ``fit`` does), on the view and the backbone at the other input size side by
side, and on all three feature sets (both sizes and the pixels; each L2-normalised), with the
same pseudo-labels. Prints ACC of the clustering and of each classifier (labels only score),
with the rule each kept (SVM or vote) and its held-out agreement with the clustering.

    VISCLUST_SHARED=../shared python benchmarks/classifier_views.py --seeds 1 --datasets digits8 quickdraw cifar10 mnist fashion-mnist

Features come from the feature store under ``--cache``/store (the same as image_views.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import UNSEEN, MOBILENET, cifar_folder, digits_folder, folder_labels, mnist_folder  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits8", "quickdraw", "cifar10", "mnist", "fashion-mnist"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/visclust-bench"))
    args = p.parse_args(argv)
    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer, ImageClusterer
    from visclust.reduce import l2_normalize

    def features(folder, size, backbone="torchvision/mobilenet_v2"):
        m = ImageClusterer(backbone=backbone, weights=str(MOBILENET) if backbone != "baseline/pixels" else None,
                           store=str(args.cache / "store"), progress=False, input_size=size, pixels=False)
        res = m.extract([str(folder)])
        return l2_normalize(np.asarray(res.features, np.float32)), list(res.paths)

    print(f"<!-- python benchmarks/classifier_views.py --seeds {args.seeds} --first-seed {args.first_seed} "
          f"--datasets {' '.join(args.datasets)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| dataset | seed | view clustered | pipeline | ACC clustering | classifier on the view | + the other size "
          "| on all views | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    folders = {"mnist": mnist_folder, "cifar10": cifar_folder, "digits8": digits_folder, **UNSEEN}
    gains = {}
    for name in args.datasets:
        if name not in folders and not name.startswith("folder:"):
            raise SystemExit(f"unknown dataset '{name}': use {', '.join(folders)} or folder:PATH")
        folder = folders[name](args.cache) if name in folders else Path(name[7:])
        big, paths = features(folder, "backbone")
        side = ImageClusterer._small_image_view  # the size a default fit would compare, if any
        bb = ImageClusterer(backbone="torchvision/mobilenet_v2", weights=str(MOBILENET)).get_backbones()
        alt = side(bb, paths)
        if alt is None:
            print(f"| {name} | | (images not small: one size only) | | | | | | |")
            continue
        size = alt[0].preprocess.input_size
        small, p2 = features(folder, size)
        pixels, p3 = features(folder, "backbone", "baseline/pixels")
        if not (paths == p2 == p3):
            raise SystemExit(f"{name}: the three feature sets hold different images")
        y = folder_labels(paths)
        k = len(set(y.tolist()))
        everything = np.hstack([big, small, pixels])
        sizes = np.hstack([big, small])
        views = {"backbone": ([big], sizes), f"backbone@{size}px": ([small], sizes),
                 "backbone+pixels": ([big, pixels], everything), f"backbone@{size}px+pixels": ([small, pixels], everything)}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for view, (parts, with_other) in views.items():
                t = time.perf_counter()
                fc = FeatureClusterer(n_clusters=k, random_state=seed).fit(np.hstack(parts))
                fits = [fc, copy.deepcopy(fc).train_classifier_on(with_other)]
                fits.append(copy.deepcopy(fc).train_classifier_on(everything) if with_other is not everything else fits[1])
                acc = [external_scores(y, f.labels_)["acc"] for f in fits]
                for key, a in zip(("size", "all"), acc[1:]):
                    gains.setdefault(key, []).append(a - acc[0])
                start = external_scores(y, fc.cluster_labels_)["acc"]
                print(f"| {name} | {seed} | {view} | {fc.pipeline_} | {start:.3f} | "
                      + " | ".join(f"{a:.3f} ({f.classifier_.kind_} {max(f.classifier_.agreement_.values(), default=0):.2f})"
                                   for a, f in zip(acc, fits))
                      + f" | {time.perf_counter() - t:.0f} |", flush=True)
    for key, what in (("size", "the view + the other input size"), ("all", "all views")):
        if gains.get(key):
            g = np.asarray(gains[key])
            print(f"\n{what} minus the view's own classifier: mean {g.mean():+.4f}, min {g.min():+.3f}, "
                  f"max {g.max():+.3f}, higher in {int((g > 0).sum())} of {len(g)}, lower in {int((g < 0).sum())}")


if __name__ == "__main__":
    main()
