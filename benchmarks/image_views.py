"""The label-free choice of the raw-pixels view (``ImageClusterer(pixels='auto')``) on
labelled image folders: which view it keeps, the two stabilities, and the ACC of each.

    VISCLUST_SHARED=../shared python benchmarks/pixels_view.py --seeds 3 [--datasets mnist cifar10 folder:PATH]

Features go through a feature store under ``--cache``/store, so only the first run extracts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_data import MOBILENET, cifar_folder, folder_labels, mnist_folder  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path("/tmp/visclust-bench"))
    args = p.parse_args(argv)
    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer, ImageClusterer

    print(f"<!-- python benchmarks/pixels_view.py --seeds {args.seeds} --datasets {' '.join(args.datasets)}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| dataset | seed | stability without / with pixels | kept | ACC kept | time (s) |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        folder = {"mnist": mnist_folder, "cifar10": cifar_folder}[name](args.cache) if name in ("mnist", "cifar10") \
            else Path(name[7:])
        accs = []
        for seed in range(args.seeds):
            m = ImageClusterer(backbone="torchvision/mobilenet_v2", weights=str(MOBILENET), n_clusters=10,
                               clusterer=FeatureClusterer(random_state=seed), store=str(args.cache / "store"),
                               progress=False, pixels="auto")
            t = time.perf_counter()
            m.fit([str(folder)])
            secs = time.perf_counter() - t
            y = folder_labels(m.paths_)
            acc = external_scores(y, m.labels_)["acc"]
            accs.append(acc)
            s = m.view_scores_
            kept = "+".join(c.name.split("/")[-1] for c in m.backbone_configs_)
            print(f"| {name} | {seed} | {s['backbone']:.3f} / {s['backbone+pixels']:.3f} | {kept} | {acc:.3f} | "
                  f"{secs:.0f} |", flush=True)
        print(f"| {name} | mean | | | **{np.mean(accs):.3f} ± {np.std(accs):.3f}** | |", flush=True)


if __name__ == "__main__":
    main()
