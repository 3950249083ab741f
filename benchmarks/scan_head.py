"""A clustering head trained on the frozen features (SCAN's clustering loss, as TEMI and
SCAN train one): tried on 2026-12-05 (night) as a candidate for the learned step and **not
kept** (docs/quality.md). Each image and a random one of its 20 nearest neighbours (in the
default's PCA space) should get the same cluster; an entropy term keeps the clusters used.
Ten heads share one hidden layer; the head with the lowest loss is taken (label-free, as SCAN
does). Prints ACC / NMI of that head, of every head, and of K-means in the same space.

    VISCLUST_SHARED=../shared python benchmarks/scan_head.py --datasets emoji cifar10@128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import load_dataset  # noqa: E402


def scan_heads(Z, K, k=20, heads=10, epochs=60, hidden=512, w=5.0, seed=0, batch=256, lr=1e-3):
    """Labels of each head and each head's mean loss over the last epoch."""
    import torch
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
    Zt, It = torch.from_numpy(Z.astype(np.float32)), torch.from_numpy(idx)
    body = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], hidden), torch.nn.ReLU()) if hidden else torch.nn.Identity()
    hs = torch.nn.ModuleList([torch.nn.Linear(hidden or Z.shape[1], K) for _ in range(heads)])
    opt = torch.optim.Adam(list(body.parameters()) + list(hs.parameters()), lr=lr, weight_decay=1e-4)
    n = len(Z)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot = torch.zeros(heads)
        for s in range(0, n, batch):
            b = perm[s:s + batch]
            j = It[b, torch.randint(0, k, (len(b),), generator=g)]
            hi, hj = body(Zt[b]), body(Zt[j])
            loss = 0
            for h, head in enumerate(hs):
                pi, pj = torch.softmax(head(hi), 1), torch.softmax(head(hj), 1)
                pm = pi.mean(0)
                term = -torch.log((pi * pj).sum(1).clamp_min(1e-8)).mean() + w * (pm * torch.log(pm.clamp_min(1e-8))).sum()
                loss = loss + term
                tot[h] += term.item() * len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        hidden_out = body(Zt)
        return [hd(hidden_out).argmax(1).numpy() for hd in hs], (tot / n).numpy()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["emoji", "cifar10@128"])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("VISCLUST_BENCH_CACHE", "/tmp/visclust-bench")))
    args = p.parse_args(argv)
    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from visclust.evaluate import hungarian_accuracy
    from visclust.reduce import Reducer

    torch.set_num_threads(os.cpu_count() or 1)
    for name in args.datasets:
        X, y, _ = load_dataset(name, args.cache)
        K = len(np.unique(y))
        Z = Reducer(64).fit_transform(X)
        km = KMeans(K, n_init=10, random_state=0).fit_predict(Z)
        print(f"{name}: pca+kmeans ACC {hungarian_accuracy(y, km):.3f} NMI {nmi(y, km):.3f}", flush=True)
        for cfg in (dict(hidden=512, w=5.0), dict(hidden=0, w=5.0), dict(hidden=512, w=2.0)):
            t = time.perf_counter()
            labs, losses = scan_heads(Z, K, **cfg)
            accs = [hungarian_accuracy(y, lab) for lab in labs]
            best = int(np.argmin(losses))
            print(f"{name}: {cfg} lowest-loss head ACC {accs[best]:.3f} NMI {nmi(y, labs[best]):.3f}; every head "
                  f"{min(accs):.3f}-{max(accs):.3f}; {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
