"""How visclust.kmeans.KMeans scales, against scikit-learn's KMeans measured in the same run.

(a) Lloyd iterations: wall time of one step (fit with max_iter=1 from the same initial
    centers: one assignment + update, then the final assignment), marginal time per extra
    iteration ((t[max_iter=m] - t[max_iter=1]) / (m - 1), tol=0), objective, peak RSS growth,
    and the time of the bare float32 matrix product (n x d) @ (d x k) as the floor.
(b) k=1000 on 100,000 x 256, end to end (init + Lloyd), ours and scikit-learn's.
(c) out of core: 5,000,000 x 256 float32 (5.1 GB .npy written chunkwise to a temp dir, its
    page cache dropped), mini-batch K-means with k=100 in a fresh subprocess; wall time and
    peak RSS. The temp dir is deleted afterwards.
(d) CUDA only: time per iteration at 1,000,000 x 768, k=1000 in float32 and bfloat16.
(h) Hamerly: time per iteration at 100,000 x 512 float32, k=100, on a Gaussian mixture
    (100 blobs + noise) and on plain N(0, 1) data (the hard case for bounds), from one
    k-means++ init given to all four: scikit-learn lloyd and elkan, ours lloyd and hamerly;
    per iteration = (t[max_iter=m] - t[max_iter=1]) / (n_iter[m] - 1), tol=0; objectives.

Usage::

    python benchmarks/scale.py --quick            # < 60 s, small sizes
    python benchmarks/scale.py --json out.json    # full run (~10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import psutil
import torch
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from visclust.kmeans import KMeans  # noqa: E402


def mixture(n, d, k_true, seed, std=1.0, dtype=np.float32, chunk=65536):
    """Gaussian mixture: k_true centers ~ N(0, 1) per feature plus N(0, std^2) noise.

    Written chunkwise into one array, so generating it needs no second full-size temporary
    (which would hide the peak memory of the fit measured after it).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k_true, d), dtype=np.float32)
    labels = rng.integers(0, k_true, n)
    X = np.empty((n, d), dtype=dtype)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        x *= std
        x += centers[labels[start:start + chunk]]
        X[start:start + chunk] = x
    return X, labels


def reset_peak_rss():
    """Start a new peak-RSS measurement (Linux: VmHWM; ru_maxrss cannot be reset and, in a
    child, still holds the parent's RSS from before exec)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def timed_cpu(fn):
    """(wall seconds, process CPU seconds over all threads, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def lloyd_vs_sklearn(n, d, k, repeats, iters, dtype=np.float32):
    from sklearn.cluster import KMeans as SKMeans

    X, _ = mixture(n, d, k, seed=n + d + k, dtype=dtype)
    C = X[np.random.default_rng(0).choice(n, k, replace=False)]
    sk = lambda m: SKMeans(k, init=C, n_init=1, max_iter=m, tol=0, algorithm="lloyd").fit(X)  # noqa: E731
    us = lambda m: KMeans(k, init=C, n_init=1, max_iter=m, tol=0, device="cpu").fit(X)  # noqa: E731
    a, b = sk(1), us(1)  # warm up thread pools
    r = {"n": n, "d": d, "k": k, "input_dtype": np.dtype(dtype).name}
    # alternate the two so that both see the same background load
    for m in (1, iters):
        best = {"sklearn": (float("inf"), 0.0), "ours": (float("inf"), 0.0)}
        for _ in range(repeats):
            for name, fn in (("sklearn", sk), ("ours", us)):
                wall, cpu, model = timed_cpu(lambda: fn(m))
                best[name] = min(best[name], (wall, cpu))
                a, b = (model, b) if name == "sklearn" else (a, model)
        for name in best:
            r[f"{name}_s_{m}iter"], r[f"{name}_cpu_s_{m}iter"] = best[name]
        r[f"sklearn_inertia_{m}iter"], r[f"ours_inertia_{m}iter"] = float(a.inertia_), float(b.inertia_)
        r[f"sklearn_n_iter_{m}iter"], r[f"ours_n_iter_{m}iter"] = int(a.n_iter_), int(b.n_iter_)
    x, c = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(C.astype(np.float32))
    r["sgemm_floor_s"] = timed(lambda: x @ c.T, repeats)[0]
    r["sklearn_s_per_iter"] = (r[f"sklearn_s_{iters}iter"] - r["sklearn_s_1iter"]) / (iters - 1)
    r["ours_s_per_iter"] = (r[f"ours_s_{iters}iter"] - r["ours_s_1iter"]) / (iters - 1)
    r["speedup_one_step"] = r["sklearn_s_1iter"] / r["ours_s_1iter"]
    r[f"cpu_ratio_{iters}iter"] = r[f"sklearn_cpu_s_{iters}iter"] / r[f"ours_cpu_s_{iters}iter"]
    r["speedup_per_iter"] = r["sklearn_s_per_iter"] / max(r["ours_s_per_iter"], 1e-9)
    r["objective_rel_diff_1iter"] = abs(r["ours_inertia_1iter"] / r["sklearn_inertia_1iter"] - 1)
    r[f"objective_rel_diff_{iters}iter"] = abs(r[f"ours_inertia_{iters}iter"] / r[f"sklearn_inertia_{iters}iter"] - 1)
    return r


def peak_memory_child(n, d, k, which, dtype):
    """One 1-step fit in a fresh process: peak RSS (ru_maxrss) above the RSS with the data loaded."""
    X, _ = mixture(n, d, k, seed=n + d + k, dtype=np.dtype(dtype))
    C = X[np.random.default_rng(0).choice(n, k, replace=False)]
    if which == "sklearn":
        from sklearn.cluster import KMeans as SKMeans

        model = SKMeans(k, init=C, n_init=1, max_iter=1, tol=0, algorithm="lloyd")
    else:
        model = KMeans(k, init=C, n_init=1, max_iter=1, tol=0, device="cpu")
    before = psutil.Process().memory_info().rss
    reset_peak_rss()
    model.fit(X)
    peak = peak_rss_bytes()
    print(json.dumps({"data_mb": X.nbytes / 2**20, "rss_before_fit_mb": before / 2**20,
                      "peak_growth_mb": (peak - before) / 2**20}))


def peak_memory(n, d, k, dtype):
    r = {"n": n, "d": d, "k": k, "input_dtype": dtype}
    for which in ("sklearn", "ours"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child_mem", str(n), str(d), str(k),
                              which, dtype], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        r["data_mb"], r[f"{which}_peak_growth_mb"] = res["data_mb"], res["peak_growth_mb"]
    return r


def many_clusters(n, d, k, max_iter, with_sklearn):
    from sklearn.cluster import KMeans as SKMeans
    from sklearn.metrics import adjusted_rand_score

    X, _ = mixture(n, d, k, seed=7, std=1.0)
    r = {"n": n, "d": d, "k": k, "max_iter": max_iter, "n_init": 1}
    t, ours = timed(lambda: KMeans(k, n_init=1, max_iter=max_iter, random_state=0, device="cpu").fit(X), 1)
    r.update(ours_s=t, ours_inertia=float(ours.inertia_), ours_n_iter=int(ours.n_iter_))
    if with_sklearn:
        t, ref = timed(lambda: SKMeans(k, n_init=1, max_iter=max_iter, random_state=0, algorithm="lloyd").fit(X), 1)
        r.update(sklearn_s=t, sklearn_inertia=float(ref.inertia_), sklearn_n_iter=int(ref.n_iter_),
                 speedup=t / r["ours_s"], ari_ours_vs_sklearn=adjusted_rand_score(ref.labels_, ours.labels_))
    return r


def fit_many_clusters(n, d, k, **params):
    """One ``FeatureClusterer(n_clusters=k, random_state=0, **params).fit`` on labelled
    synthetic blobs, timed, with its peak RSS (this process only: UMAP's children apart)."""
    from sklearn.datasets import make_blobs

    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer

    X, y = make_blobs(n, n_features=d, centers=k, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)
    reset_peak_rss()
    t, fc = timed(lambda: FeatureClusterer(n_clusters=k, random_state=0, **params).fit(X), 1)
    return fc, {"n": n, "d": d, "k": k, "fit_s": t, "classifier": fc.classifier_.kind_,
                "agreement": fc.classifier_.agreement_, "ari_final": external_scores(y, fc.labels_)["ari"],
                "ari_clustering": external_scores(y, fc.cluster_labels_)["ari"],
                "peak_rss_mb": peak_rss_bytes() / 2**20}


def pipeline_many_clusters(n, d, k):
    """The whole fit at many clusters with K-means in the PCA space: K-means and the
    classifier step (self-trained SVM, out-of-fold temperature, the vote's test)."""
    return fit_many_clusters(n, d, k, method="kmeans", space="pca")[1]


def default_many_clusters(n, d, k):
    """The default fit (automatic choice of space and method) at many clusters, with the time
    of each candidate and of the embeddings."""
    fc, r = fit_many_clusters(n, d, k)
    sel = getattr(fc, "selection_", None)
    return dict(r, pipeline=fc.pipeline_, stability=fc.pipeline_scores_, seconds={} if sel is None else sel.seconds)


def classifier_with_copies(n, d, k, n_copies=3):
    """``FeatureClusterer(n_clusters=k, method='kmeans', space='pca').fit`` on a Gaussian
    mixture, then ``refit_classifier`` with ``n_copies`` noisy copies of every row: the
    classifier step that ``--augment`` runs, timed (the copy filter also alone), with the peak
    RSS of this process."""
    from visclust.classify import plausible_copies
    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer

    X, y = mixture(n, d, k, seed=0, std=1.0)
    rng = np.random.default_rng(1)
    views = []
    for _ in range(n_copies):
        views.append(X + rng.standard_normal(X.shape, dtype=np.float32) * np.float32(0.3))
    reset_peak_rss()
    fc = FeatureClusterer(n_clusters=k, method="kmeans", space="pca", random_state=0)
    fit_s, _ = timed(lambda: fc.fit(X), 1)
    Z, Zv = fc.transform(X), [fc.transform(v) for v in views]
    filter_s, keep = timed(lambda: plausible_copies(Z, Zv), 1)
    before = external_scores(y, fc.labels_)["acc"]
    refit_s, _ = timed(lambda: fc.refit_classifier(X, views), 1)
    clf = fc.classifier_
    return {"n": n, "d": d, "k": k, "copies": n_copies, "fit_s": fit_s, "filter_s": filter_s, "refit_s": refit_s,
            "kept_share": [float(m.mean()) for m in keep],
            "classifier": clf.kind_, "epochs": int(clf.n_iter_), "acc_before": before,
            "acc_after": external_scores(y, fc.labels_)["acc"], "peak_rss_mb": peak_rss_bytes() / 2**20}


def sampled_default_fit(n, d, k, max_cluster_rows="default"):
    """The default ``FeatureClusterer(n_clusters=k)`` (every candidate, UMAP included) on a
    Gaussian mixture of ``n`` rows, clustering a sample of ``max_cluster_rows`` (None: every
    row; 'default': the library's), timed, with its ACC against the mixture's components and
    this process's peak RSS."""
    from visclust.evaluate import external_scores
    from visclust.model import FeatureClusterer

    X, y = mixture(n, d, k, seed=0, std=1.5)
    reset_peak_rss()
    params = {} if max_cluster_rows == "default" else {"max_cluster_rows": max_cluster_rows}
    t, fc = timed(lambda: FeatureClusterer(n_clusters=k, random_state=0, **params).fit(X), 1)
    sample = fc.sample_index_
    return {"n": n, "d": d, "k": k, "max_cluster_rows": max_cluster_rows, "fit_s": t, "pipeline": fc.pipeline_,
            "clustered_rows": n if sample is None else len(sample), "classifier": fc.classifier_.kind_,
            "acc": external_scores(y, fc.labels_)["acc"], "peak_rss_mb": peak_rss_bytes() / 2**20}


def write_npy_chunkwise(path, n, d, k_true, chunk=200_000, seed=0):
    """Write an (n, d) float32 .npy of mixture data without mapping it (RSS stays one chunk)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k_true, d), dtype=np.float32)
    labels = np.empty(n, dtype=np.int16)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for start in range(0, n, chunk):
            b = min(chunk, n - start)
            lab = rng.integers(0, k_true, b)
            x = rng.standard_normal((b, d), dtype=np.float32)
            x += centers[lab]
            f.write(x.tobytes())
            labels[start:start + b] = lab
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):  # the fit below then starts from disk, not the page cache
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return labels


def out_of_core_child(path, labels_path, k, max_iter):
    """Runs in a fresh process so that ru_maxrss is this fit's alone."""
    from sklearn.metrics import adjusted_rand_score

    rss_after_import = psutil.Process().memory_info().rss
    X = np.load(path, mmap_mode="r")
    reset_peak_rss()
    t = time.perf_counter()
    km = KMeans(k, mini_batch=True, max_iter=max_iter, random_state=0, device="cpu").fit(X)
    wall = time.perf_counter() - t
    fit_peak = peak_rss_bytes()
    reset_peak_rss()
    t = time.perf_counter()
    labels = km.predict(X)
    predict_s = time.perf_counter() - t
    predict_peak = peak_rss_bytes()
    true = np.load(labels_path)
    print(json.dumps({
        "fit_s": wall, "predict_s": predict_s, "n_iter": int(km.n_iter_), "mini_batch": bool(km.mini_batch_),
        "inertia": float(km.inertia_), "ari_vs_generating_labels": adjusted_rand_score(true, km.labels_),
        "predict_equals_labels": bool((labels == km.labels_).all()),
        "rss_after_import_mb": rss_after_import / 2**20,
        "peak_rss_mb": max(fit_peak, predict_peak) / 2**20,  # VmHWM during fit / predict
        "fit_peak_rss_mb": fit_peak / 2**20, "predict_peak_rss_mb": predict_peak / 2**20,
    }))


def out_of_core(n, d, k, max_iter, tmp_root):
    need = n * d * 4
    free = shutil.disk_usage(tmp_root).free
    r = {"n": n, "d": d, "k": k, "file_gb": need / 1e9, "free_disk_gb": free / 1e9, "max_iter": max_iter}
    if free < 2 * need:
        r["skipped"] = f"needs {2 * need / 1e9:.1f} GB free in {tmp_root}, has {free / 1e9:.1f} GB"
        return r
    tmp = tempfile.mkdtemp(prefix="visclust-scale-", dir=tmp_root)
    try:
        path, labels_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "labels.npy")
        t = time.perf_counter()
        np.save(labels_path, write_npy_chunkwise(path, n, d, k))
        r["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", path, labels_path, str(k),
                              str(max_iter)], capture_output=True, text=True, check=True)
        r["child_wall_s"] = time.perf_counter() - t
        r.update(json.loads(out.stdout.strip().splitlines()[-1]))
        r["ram_total_gb"] = psutil.virtual_memory().total / 1e9
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return r


def cuda_iterations(n, d, k, iters):
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    X = torch.randn(n, d, device="cuda").cpu().numpy()  # generated on the GPU: fast
    C = X[np.random.default_rng(0).choice(n, k, replace=False)]
    r = {"n": n, "d": d, "k": k, "device": torch.cuda.get_device_name()}
    for dtype in ("float32", "bfloat16"):
        fit = lambda m: KMeans(k, init=C, n_init=1, max_iter=m, tol=0, device="cuda", dtype=dtype).fit(X)  # noqa: E731
        fit(1)
        t1, a = timed(lambda: (fit(1), torch.cuda.synchronize())[0], 2)
        tm, b = timed(lambda: (fit(iters), torch.cuda.synchronize())[0], 2)
        r[f"{dtype}_s_per_iter"] = (tm - t1) / (iters - 1)
        r[f"{dtype}_inertia_{iters}iter"] = float(b.inertia_)
    r["bf16_objective_rel_diff"] = abs(r[f"bfloat16_inertia_{iters}iter"] / r[f"float32_inertia_{iters}iter"] - 1)
    return r


def hamerly_vs_sklearn(n, d, k, data, repeats, iters, bf16=False):
    from sklearn.cluster import KMeans as SKMeans
    from sklearn.cluster import kmeans_plusplus

    if data == "blobs":
        X, _ = mixture(n, d, k, seed=n + d + k)
    else:
        X = np.random.default_rng(n + d + k).standard_normal((n, d), dtype=np.float32)
    sub = np.random.default_rng(0).choice(n, min(n, 10_000), replace=False)
    C, _ = kmeans_plusplus(X[np.sort(sub)], k, random_state=0)  # one k-means++ init for all four
    fits = {
        "sklearn_lloyd": lambda m: SKMeans(k, init=C, n_init=1, max_iter=m, tol=0, algorithm="lloyd").fit(X),
        "sklearn_elkan": lambda m: SKMeans(k, init=C, n_init=1, max_iter=m, tol=0, algorithm="elkan").fit(X),
        "ours_lloyd": lambda m: KMeans(k, init=C, max_iter=m, tol=0, algorithm="lloyd", device="cpu").fit(X),
        "ours_hamerly": lambda m: KMeans(k, init=C, max_iter=m, tol=0, algorithm="hamerly", device="cpu").fit(X),
    }
    if bf16:  # the distance product in bf16 on a CPU with AMX / AVX512-BF16
        fits["ours_lloyd_bf16"] = lambda m: KMeans(k, init=C, max_iter=m, tol=0, algorithm="lloyd", device="cpu",
                                                   dtype="bfloat16").fit(X)
        fits["ours_hamerly_bf16"] = lambda m: KMeans(k, init=C, max_iter=m, tol=0, algorithm="hamerly", device="cpu",
                                                     dtype="bfloat16").fit(X)
    for fit in fits.values():  # warm up thread pools
        fit(1)
    r = {"n": n, "d": d, "k": k, "data": data, "max_iter": iters}
    best = {(name, m): float("inf") for name in fits for m in (1, iters)}
    models = {}
    for _ in range(repeats):  # alternate, so that all see the same background load
        for m in (1, iters):
            for name, fit in fits.items():
                # each timed fit follows an untimed one of its own: right after one of ours,
                # scikit-learn's 200 MB copy of X cost 0.5-0.8 s of kernel time (measured,
                # docs/scaling.md (h8)), which landed in its 1-iteration fit and made the
                # per-iteration difference meaningless (even negative)
                fit(m)
                t = time.perf_counter()
                models[name, m] = fit(m)
                best[name, m] = min(best[name, m], time.perf_counter() - t)
    for name in fits:
        a, b = models[name, 1], models[name, iters]
        r[f"{name}_s_1iter"], r[f"{name}_s_{iters}iter"] = best[name, 1], best[name, iters]
        r[f"{name}_n_iter"], r[f"{name}_inertia"] = int(b.n_iter_), float(b.inertia_)
        r[f"{name}_s_per_iter"] = (best[name, iters] - best[name, 1]) / max(1, int(b.n_iter_) - int(a.n_iter_))
        r[f"{name}_obj_rel_diff"] = abs(float(b.inertia_) / r["sklearn_lloyd_inertia"] - 1) if name != "sklearn_lloyd" \
            else 0.0
    ham = models["ours_hamerly", iters]
    r["hamerly_recomputed_per_iter"] = [int(v) for v in ham.n_recomputed_]
    r["hamerly_moved_centers_per_iter"] = [int(v) for v in ham.n_moved_centers_]
    r["hamerly_labels_equal_ours_lloyd"] = float(np.mean(ham.labels_ == models["ours_lloyd", iters].labels_))
    r["speedup_hamerly_vs_sklearn_lloyd"] = r["sklearn_lloyd_s_per_iter"] / r["ours_hamerly_s_per_iter"]
    r["speedup_hamerly_vs_sklearn_elkan"] = r["sklearn_elkan_s_per_iter"] / r["ours_hamerly_s_per_iter"]
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only (< 60 s)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats, best kept (default 3, quick 1)")
    ap.add_argument("--tmpdir", default=tempfile.gettempdir(), help="where the out-of-core .npy is written")
    ap.add_argument("--skip-out-of-core", action="store_true", help="skip (c)")
    ap.add_argument("--sections", default="ambpcdh", help="which parts to run: a (Lloyd timing), m (peak memory), "
                    "b (k=1000), p (the whole fit, classifier step included, at k=1000), q (the default fit, automatic "
                    "choice, at k=1000), v (the classifier step with augmented copies, 1,000,000 rows), s (the default fit on "
                    "--sample-rows rows, clustering a sample), c (out of core), d (CUDA), "
                    "h (Hamerly vs scikit-learn); default %(default)s")
    ap.add_argument("--copies-rows", type=int, default=1_000_000, help="rows of section v (default %(default)s)")
    ap.add_argument("--sample-rows", default="200000,1000000",
                    help="rows of section s, comma-separated (default %(default)s)")
    ap.add_argument("--sample-full-upto", type=int, default=200_000,
                    help="section s also clusters every row (max_cluster_rows=None) up to this many rows "
                         "(default %(default)s)")
    ap.add_argument("--hamerly-iters", type=int, default=11, help="max_iter m of section h (default %(default)s)")
    ap.add_argument("--bf16", action="store_true", help="section h also times dtype='bfloat16' (CPUs with AMX or "
                    "AVX512-BF16 only)")
    ap.add_argument("--hamerly-data", default="blobs,random", help="data sets of section h (default %(default)s)")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_child_mem", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return out_of_core_child(args._child[0], args._child[1], int(args._child[2]), int(args._child[3]))
    if args._child_mem:
        n, d, k, which, dtype = args._child_mem
        return peak_memory_child(int(n), int(d), int(k), which, dtype)
    sections = set(args.sections) - ({"c"} if args.skip_out_of_core else set())
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    iters = 4 if quick else 6
    res = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {psutil.cpu_count()} logical CPUs, "
                      f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, torch {torch.__version__} "
                      f"({torch.get_num_threads()} threads)",
           "load_avg_start": os.getloadavg()}
    print(f"# {res['command']}\n# {res['date']}  {res['machine']}  load {res['load_avg_start']}")

    warnings.simplefilter("ignore", ConvergenceWarning)  # 1-step fits may leave a cluster empty
    if "a" in sections:
        sizes = [(5_000, 32, 10), (20_000, 64, 50)] if quick else \
            [(20_000, 128, 10), (100_000, 128, 100), (100_000, 512, 100)]
        print(f"\n(a) Lloyd vs sklearn.cluster.KMeans(algorithm='lloyd'), same data and initial centers, "
              f"best of {repeats}", flush=True)
        res["lloyd"] = [lloyd_vs_sklearn(n, d, k, repeats, iters) for n, d, k in sizes]
        if not quick:  # float64 input: what sklearn computes in when users pass float64 features
            res["lloyd"].append(lloyd_vs_sklearn(100_000, 512, 100, repeats, iters, dtype=np.float64))
        print(f"{'n x d, k':>20} | {'sk 1 step':>9} {'ours':>7} {'x':>5} | {'sk /iter':>8} {'ours':>7} {'x':>5} | "
              f"{f'CPU s {iters} it':>13} {'x':>5} | {'sgemm':>6} | {'obj diff 1':>10} {f'obj diff {iters}':>10}")
        for r in res["lloyd"]:
            print(f"{r['n']:>7} x {r['d']:<4} k={r['k']:<4}{'*' if r['input_dtype'] == 'float64' else ' '}| "
                  f"{r['sklearn_s_1iter']:9.3f} {r['ours_s_1iter']:7.3f} {r['speedup_one_step']:5.2f} | "
                  f"{r['sklearn_s_per_iter']:8.3f} {r['ours_s_per_iter']:7.3f} {r['speedup_per_iter']:5.2f} | "
                  f"{r[f'sklearn_cpu_s_{iters}iter']:6.2f} {r[f'ours_cpu_s_{iters}iter']:6.2f} "
                  f"{r[f'cpu_ratio_{iters}iter']:5.2f} | {r['sgemm_floor_s']:6.3f} | "
                  f"{r['objective_rel_diff_1iter']:10.2e} {r[f'objective_rel_diff_{iters}iter']:10.2e}")
        print("  * float64 input (sklearn computes in float64, ours in float32)" if not quick else "", flush=True)

    if "m" in sections:
        n, d, k = (20_000, 64, 50) if quick else (100_000, 512, 100)
        print(f"\n(m) peak RSS (VmHWM) of one 1-step fit above the RSS with the data loaded, fresh process each, "
              f"{n:,} x {d}, k={k}", flush=True)
        res["peak_memory"] = [peak_memory(n, d, k, dt) for dt in ("float32", "float64")]
        for r in res["peak_memory"]:
            print(f"  {r['input_dtype']} input ({r['data_mb']:.0f} MB): sklearn +{r['sklearn_peak_growth_mb']:.0f} MB, "
                  f"ours +{r['ours_peak_growth_mb']:.0f} MB", flush=True)

    if "b" in sections:
        n, d, k, mi = (10_000, 64, 200, 10) if quick else (100_000, 256, 1000, 20)
        print(f"\n(b) k={k} on {n:,} x {d}, n_init=1, max_iter={mi}, end to end", flush=True)
        r = res["many_clusters"] = many_clusters(n, d, k, mi, with_sklearn=True)
        print(f"  ours {r['ours_s']:.1f} s ({r['ours_n_iter']} iter)   sklearn {r['sklearn_s']:.1f} s "
              f"({r['sklearn_n_iter']} iter)   speedup {r['speedup']:.2f}   inertia ours/sklearn "
              f"{r['ours_inertia'] / r['sklearn_inertia']:.4f}   ARI ours vs sklearn {r['ari_ours_vs_sklearn']:.3f}",
              flush=True)

    if "p" in sections:
        n, d, k = (10_000, 64, 200) if quick else (100_000, 256, 1000)
        print(f"\n(p) FeatureClusterer(n_clusters={k}, method='kmeans', space='pca').fit on make_blobs({n:,}, "
              f"{d}, centers={k}, cluster_std=4): K-means and the classifier step", flush=True)
        r = res["pipeline_many_clusters"] = pipeline_many_clusters(n, d, k)
        print(f"  fit {r['fit_s']:.1f} s | classifier {r['classifier']} (out-of-fold agreement {r['agreement']}) | "
              f"ARI final {r['ari_final']:.3f}, clustering {r['ari_clustering']:.3f} | peak RSS {r['peak_rss_mb']:.0f} MB",
              flush=True)

    if "q" in sections:
        n, d, k = (10_000, 64, 200) if quick else (100_000, 256, 1000)
        print(f"\n(q) FeatureClusterer(n_clusters={k}, random_state=0).fit on make_blobs({n:,}, {d}, centers={k}, "
              f"cluster_std=4): the default, every candidate", flush=True)
        r = res["default_many_clusters"] = default_many_clusters(n, d, k)
        print(f"  fit {r['fit_s']:.1f} s | chose {r['pipeline']} | classifier {r['classifier']} | ARI final "
              f"{r['ari_final']:.3f} | peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        for name, sec in r["seconds"].items():
            stab = r["stability"].get(name)
            print(f"    {name}: {sec:.1f} s" + ("" if stab is None else f", stability {stab:.3f}"), flush=True)

    if "v" in sections:
        n, d, k = (20_000, 64, 10) if quick else (args.copies_rows, 64, 100)
        print(f"\n(v) the classifier step with 3 augmented copies (--augment 3): FeatureClusterer(n_clusters={k}, "
              f"method='kmeans', space='pca').fit on a {n:,} x {d} Gaussian mixture, then refit_classifier(X, copies)",
              flush=True)
        r = res["classifier_with_copies"] = classifier_with_copies(n, d, k)
        print(f"  fit {r['fit_s']:.1f} s | copy filter alone {r['filter_s']:.1f} s (kept "
              f"{', '.join(f'{x:.2f}' for x in r['kept_share'])}) | "
              f"refit_classifier {r['refit_s']:.1f} s ({r['classifier']}, {r['epochs']} epochs) | ACC "
              f"{r['acc_before']:.3f} -> {r['acc_after']:.3f} | peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    if "s" in sections:
        sizes = [20_000] if quick else [int(x) for x in args.sample_rows.split(",")]
        for n in sizes:
            for m in ["default"] + ([None] if n <= args.sample_full_upto else []):
                what = "every row" if m is None else "a sample (the default max_cluster_rows)"
                print(f"\n(s) the default FeatureClusterer(n_clusters=10).fit on a {n:,} x 64 Gaussian mixture "
                      f"(10 components, noise 1.5), clustering {what}", flush=True)
                r = sampled_default_fit(n, 64, 10, m)
                res.setdefault("sampled_default_fit", []).append(r)
                print(f"  fit {r['fit_s']:.1f} s | clustered {r['clustered_rows']:,} rows | chose {r['pipeline']} | "
                      f"classifier {r['classifier']} | ACC {r['acc']:.3f} | peak RSS {r['peak_rss_mb']:.0f} MB",
                      flush=True)

    if "c" in sections:
        n, d, k, mi = (200_000, 64, 20, 2) if quick else (5_000_000, 256, 100, 3)
        print(f"\n(c) out of core: {n:,} x {d} float32 memmap ({n * d * 4 / 1e9:.2f} GB), k={k}, mini-batch, "
              f"max_iter={mi} passes", flush=True)
        r = res["out_of_core"] = out_of_core(n, d, k, mi, args.tmpdir)
        if "skipped" in r:
            print("  skipped:", r["skipped"])
        else:
            print(f"  generate {r['generate_s']:.1f} s | fit {r['fit_s']:.1f} s ({r['n_iter']} passes) | "
                  f"predict {r['predict_s']:.1f} s | peak RSS during fit/predict {r['peak_rss_mb']:.0f} MB "
                  f"(RSS after imports {r['rss_after_import_mb']:.0f} MB) | ARI vs generating labels "
                  f"{r['ari_vs_generating_labels']:.4f}", flush=True)

    if "d" in sections:
        n, d, k = (100_000, 128, 100) if quick else (1_000_000, 768, 1000)
        print(f"\n(d) CUDA {n:,} x {d}, k={k}")
        r = res["cuda"] = cuda_iterations(n, d, k, iters)
        print("  " + ("skipped: " + r["skipped"] if "skipped" in r else
                      f"fp32 {r['float32_s_per_iter']:.4f} s/iter, bf16 {r['bfloat16_s_per_iter']:.4f} s/iter, "
                      f"bf16 objective diff {r['bf16_objective_rel_diff']:.2e} ({r['device']})"))
    if "h" in sections:
        n, d, k = (20_000, 64, 20) if quick else (100_000, 512, 100)
        m = args.hamerly_iters
        print(f"\n(h) Hamerly: {n:,} x {d} float32, k={k}, one k-means++ init, tol=0, max_iter 1 and {m}, "
              f"best of {repeats}; s/iter = (t[{m}] - t[1]) / (n_iter - 1)", flush=True)
        bf16 = args.bf16
        if bf16:
            from visclust.kmeans import cpu_has_bf16_units

            bf16 = cpu_has_bf16_units()
            if not bf16:
                print("  --bf16: skipped, this CPU has no bf16 matrix units (AMX / AVX512-BF16)")
        res["hamerly"] = [hamerly_vs_sklearn(n, d, k, data, repeats, m, bf16) for data in args.hamerly_data.split(",")]
        names = ("sklearn_lloyd", "sklearn_elkan", "ours_lloyd", "ours_hamerly") + \
            (("ours_lloyd_bf16", "ours_hamerly_bf16") if bf16 else ())
        for r in res["hamerly"]:
            print(f"  {r['data']}:")
            for name in names:
                print(f"    {name:14s} {r[name + '_s_per_iter']:8.4f} s/iter  ({r[name + '_n_iter']} iter, "
                      f"1 iter {r[name + '_s_1iter']:.3f} s, {m} iter {r[name + f'_s_{m}iter']:.3f} s)  "
                      f"inertia {r[name + '_inertia']:.6e}  rel diff {r[name + '_obj_rel_diff']:.1e}  "
                      f"x{r['sklearn_lloyd_s_per_iter'] / r[name + '_s_per_iter']:.2f} vs sklearn lloyd")
            print(f"    hamerly vs sklearn lloyd {r['speedup_hamerly_vs_sklearn_lloyd']:.2f}x, vs elkan "
                  f"{r['speedup_hamerly_vs_sklearn_elkan']:.2f}x; rows recomputed per iteration "
                  f"{r['hamerly_recomputed_per_iter']}; centers computed for every row "
                  f"{r['hamerly_moved_centers_per_iter']}; labels equal to ours lloyd "
                  f"{r['hamerly_labels_equal_ours_lloyd']:.6f}", flush=True)
    res["load_avg_end"] = os.getloadavg()
    print(f"\n# load average at end {res['load_avg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
