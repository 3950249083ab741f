"""Does self-training gain from augmented views of the images? (An experiment; ``fit`` does
not do this yet.)

The classifier step trained on the clustering's own frozen features only reproduces the
clustering (docs/benchmarks.md: -0.005 to +0.003 ACC). Here each image also gets ``--views``
augmented copies (SimCLR's kind: random resized crop of 35-100% of the area, mirror, colour
jitter 0.4/0.4/0.4/0.1 with p = 0.8, greyscale with p = 0.2; fixed seeds, so reruns draw the
same copies), written to a folder next to the originals and sent through the same backbone.
The start is the default ``FeatureClusterer``'s clustering of the original features (no
labels). Then, for a few rounds, a logistic regression (L2 -> PCA-256 fitted on the originals
-> L2) is trained on each cluster's most confident members (``--fraction``), once on their
original features only and once on the originals plus their augmented copies with the same
label, and every image is relabelled by the mean probability over its original and its copies.
Labels are used only for the ACC printed.

    VISCLUST_SHARED=../shared python benchmarks/augment_selftrain.py --datasets cifar10@128 emoji fashion-mnist --seeds 2

``NAME@SIZE`` extracts at that input size (the default ``fit`` chooses 128 px for CIFAR-10's 32 x 32
images); features are cached under ``--cache`` like benchmarks/quality.py's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import UNSEEN, cifar_folder, image_features, mnist_folder  # noqa: E402


def augmented_folder(folder: Path, cache: Path, view: int) -> Path:
    """``folder``'s images, each replaced by one augmented copy (PNG), under ``cache``."""
    import torch
    import torchvision.transforms as T

    from visclust.io import collect_inputs, load_image

    out = cache / f"augment-{folder.parent.name}-{folder.name}-{view}" / folder.name
    if (out.parent / ".done").exists():
        return out
    torch.manual_seed(100 + view)
    for p in collect_inputs([str(folder)]):
        img = load_image(p)
        aug = T.Compose([T.RandomResizedCrop(img.size[::-1], scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                         T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2)])
        q = (out / os.path.relpath(p, folder)).with_suffix(".png")
        q.parent.mkdir(parents=True, exist_ok=True)
        aug(img).save(q)
    (out.parent / ".done").touch()
    return out


def self_train(F, views, start, score, fraction, rounds):
    """ACC-free self-training; returns the labels after each round."""
    from sklearn.linear_model import LogisticRegression

    from visclust.classify import confident_members

    labels, out = start.copy(), []
    for _ in range(rounds):
        idx = confident_members(score, labels, fraction)
        clf = LogisticRegression(C=1.0, max_iter=300).fit(np.vstack([F[idx]] + [v[idx] for v in views]),
                                                           np.concatenate([labels[idx]] * (1 + len(views))))
        P = sum(clf.predict_proba(v) for v in [F] + views) / (1 + len(views))
        labels, score = clf.classes_[P.argmax(1)], P.max(1)
        out.append(labels)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["cifar10@128", "emoji", "fashion-mnist"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--fraction", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path("/tmp/visclust-bench"))
    args = p.parse_args(argv)
    from sklearn.decomposition import PCA

    from visclust.evaluate import hungarian_accuracy
    from visclust.model import FeatureClusterer

    folders = {"mnist": mnist_folder, "cifar10": cifar_folder, **UNSEEN}
    print(f"<!-- python benchmarks/augment_selftrain.py --datasets {' '.join(args.datasets)} --seeds {args.seeds} "
          f"--views {args.views}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| dataset | seed | start (default clustering) | fraction | rounds 1..n, original features only | "
          "rounds 1..n, with augmented copies |")
    print("|---|---|---|---|---|---|")
    l2 = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    for spec in args.datasets:
        name, _, size = spec.partition("@")
        if name not in folders:
            raise SystemExit(f"unknown dataset '{name}': use {', '.join(folders)}")
        size = int(size) if size else None
        folder = folders[name](args.cache)
        X, y, _ = image_features(folder, args.cache, input_size=size)
        views = []
        for v in range(args.views):
            Xa, ya, _ = image_features(augmented_folder(folder, args.cache, v), args.cache, input_size=size)
            if not (ya == y).all():
                raise SystemExit(f"{spec}: the augmented copies are not in the originals' order")
            views.append(Xa)
        pca = PCA(min(256, X.shape[1]), random_state=0).fit(l2(X))
        F = l2(pca.transform(l2(X)))
        Fv = [l2(pca.transform(l2(a))) for a in views]
        k = len(np.unique(y))
        for seed in range(args.seeds):
            fc = FeatureClusterer(n_clusters=k, random_state=seed).fit(X)
            start = fc.cluster_labels_
            for fraction in args.fraction:
                accs = [" / ".join(f"{hungarian_accuracy(y, lab):.3f}" for lab in
                                   self_train(F, vs, start, fc.confidence_, fraction, args.rounds))
                        for vs in ([], Fv)]
                print(f"| {spec} | {seed} | {hungarian_accuracy(y, start):.3f} ({fc.pipeline_}) | {fraction} | "
                      f"{accs[0]} | {accs[1]} |", flush=True)


if __name__ == "__main__":
    main()
