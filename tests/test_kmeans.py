"""Tests for visclust.kmeans: known answers on blobs, agreement with scikit-learn, memmaps."""

import numpy as np
import pytest
import sklearn.cluster
import sklearn.exceptions
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import visclust.kmeans as kmeans_module
from visclust.exceptions import InputError, NotFittedError
from visclust.kmeans import KMeans


def blobs(n=3000, k=6, d=8, std=1.0, seed=0):
    X, y = make_blobs(n, n_features=d, centers=k, cluster_std=std, center_box=(-20, 20), random_state=seed)
    return X.astype(np.float32), y


def exact_inertia(X, centers, labels):
    return float(((X.astype(np.float64) - centers[labels].astype(np.float64)) ** 2).sum())


@pytest.mark.parametrize("mini_batch", [False, True])
def test_well_separated_blobs_are_recovered(mini_batch):
    X, y = blobs()
    km = KMeans(6, n_init=3, mini_batch=mini_batch, random_state=0, device="cpu").fit(X)
    assert adjusted_rand_score(y, km.labels_) == 1.0
    assert km.mini_batch_ is mini_batch
    assert km.cluster_centers_.shape == (6, 8) and km.labels_.shape == (3000,)


def test_inertia_and_labels_match_sklearn_from_same_init():
    X, _ = blobs(n=4000, k=10, std=4.0, seed=1)  # overlapping blobs: Lloyd needs many steps
    init = X[np.random.RandomState(0).choice(len(X), 10, replace=False)]
    ref = sklearn.cluster.KMeans(10, init=init, n_init=1, algorithm="lloyd").fit(X)
    ours = KMeans(10, init=init, device="cpu").fit(X)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-3)
    assert adjusted_rand_score(ref.labels_, ours.labels_) > 0.99
    assert ours.n_iter_ == pytest.approx(ref.n_iter_, abs=2)


def test_one_lloyd_step_matches_sklearn():
    X, _ = blobs(n=2000, k=5, d=16, std=3.0, seed=2)
    init = X[:5].copy()
    ref = sklearn.cluster.KMeans(5, init=init, n_init=1, max_iter=1, algorithm="lloyd").fit(X)
    ours = KMeans(5, init=init, max_iter=1, device="cpu").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)


def test_reported_objective_is_the_true_objective():
    X, _ = blobs(n=1500, k=4, std=3.0)
    km = KMeans(4, random_state=0, device="cpu").fit(X)
    assert km.inertia_ == pytest.approx(exact_inertia(X, km.cluster_centers_, km.labels_), rel=1e-6)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-6)
    d2 = ((X[:, None, :].astype(np.float64) - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_allclose(km.transform(X) ** 2, d2, rtol=1e-3, atol=1e-2)
    np.testing.assert_array_equal(km.predict(X), d2.argmin(1))
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)


def test_memmap_gives_the_same_result_as_an_array(tmp_path):
    X, y = blobs(n=2500, k=5, std=2.0)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = KMeans(5, random_state=3, device="cpu").fit(X)
    b = KMeans(5, random_state=3, batch_size=300, device="cpu").fit(mm)  # 9 chunks per pass
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    np.testing.assert_array_equal(a.predict(mm), a.labels_)


def test_mini_batch_streams_a_memmap_and_finds_the_blobs(tmp_path, monkeypatch):
    # a tiny init sample forces the streamed updates, not the sample, to place the centers
    monkeypatch.setattr(kmeans_module, "_SAMPLE_ROWS", 200)
    X, y = blobs(n=20000, k=8, d=16, std=2.5, seed=4)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    km = KMeans(8, mini_batch=True, batch_size=1024, max_iter=5, random_state=0, device="cpu").fit(mm)
    assert km.mini_batch_
    assert adjusted_rand_score(y, km.labels_) > 0.95
    full = sklearn.cluster.KMeans(8, n_init=3, random_state=0).fit(X)
    assert km.inertia_ < 1.02 * full.inertia_


def test_memmap_bigger_than_the_ram_share_switches_to_mini_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(kmeans_module, "_RAM_FRACTION", 1e-12)
    X, y = blobs(n=1000, k=3)
    np.save(tmp_path / "x.npy", X)
    km = KMeans(3, random_state=0, device="cpu").fit(np.load(tmp_path / "x.npy", mmap_mode="r"))
    assert km.mini_batch_ and adjusted_rand_score(y, km.labels_) == 1.0
    assert not KMeans(3, random_state=0, device="cpu").fit(X).mini_batch_  # in-memory arrays never switch


def test_empty_cluster_is_reseeded_with_a_far_point():
    X, _ = blobs(n=600, k=3, d=2)
    init = np.vstack([X[:3], [[1e4, 1e4]]]).astype(np.float32)  # the last center wins no point
    km = KMeans(4, init=init, device="cpu").fit(X)
    assert np.bincount(km.labels_, minlength=4).min() > 0
    assert np.abs(km.cluster_centers_).max() < 100


@pytest.mark.parametrize("mini_batch", [False, True])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_random_state_gives_the_same_result(mini_batch, init):
    X, _ = blobs(n=2000, k=7, std=4.0)
    a = KMeans(7, init=init, mini_batch=mini_batch, batch_size=256, random_state=11, device="cpu").fit(X)
    b = KMeans(7, init=init, mini_batch=mini_batch, batch_size=256, random_state=11, device="cpu").fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_many_clusters_use_a_sample_for_init():
    X, _ = blobs(n=3000, k=50, d=8, std=1.0)
    km = KMeans(300, n_init=1, max_iter=5, random_state=0, device="cpu").fit(X)
    assert km.cluster_centers_.shape == (300, 8)
    assert len(np.unique(km.labels_)) == 300


def test_predict_before_fit_says_to_fit():
    km = KMeans(3)
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(NotFittedError, match=r"call fit\(X\)"):
            method(np.zeros((4, 2)))
    with pytest.raises(sklearn.exceptions.NotFittedError):  # scikit-learn's tools see it too
        km.predict(np.zeros((4, 2)))


@pytest.mark.parametrize("params, match", [
    ({"n_clusters": 0}, "n_clusters=0"),
    ({"n_clusters": 2.5}, "n_clusters=2.5"),
    ({"n_init": 0}, "n_init=0"),
    ({"max_iter": -1}, "max_iter=-1"),
    ({"tol": -1.0}, "tol=-1.0"),
    ({"init": "kmeans"}, "init='kmeans'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"dtype": "float16"}, "dtype='float16'"),
    ({"init": np.zeros((2, 3))}, r"init has shape \(2, 3\)"),
])
def test_bad_parameters_say_what_to_pass(params, match):
    with pytest.raises(InputError, match=match):
        KMeans(**{"n_clusters": 3, **params}).fit(np.random.RandomState(0).rand(20, 2))


def test_bad_data_says_how_to_fix(tmp_path):
    with pytest.raises(InputError, match=r"n_samples=3 rows but n_clusters=5; lower n_clusters"):
        KMeans(5).fit(np.zeros((3, 2)))
    X = np.random.RandomState(0).rand(100, 3).astype(np.float32)
    X[42, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinity.*row 42"):
        KMeans(2, device="cpu").fit(X)
    with pytest.raises(InputError, match="NaN or infinity"):
        KMeans(2, mini_batch=True, device="cpu").fit(X)
    np.save(tmp_path / "x.npy", X)
    km = KMeans(2, device="cpu").fit(np.nan_to_num(X))
    with pytest.raises(InputError, match="NaN or infinity.*row 42"):
        km.predict(np.load(tmp_path / "x.npy", mmap_mode="r"))
    with pytest.raises(InputError, match="X has 2 features, but KMeans is expecting 3"):
        km.predict(X[:, :2])
    with pytest.raises(InputError, match="Expected 2D array"):
        KMeans(2).fit(X[:, 0])


def test_bfloat16_on_a_cpu_without_bf16_units_says_what_to_pass(monkeypatch):
    monkeypatch.setattr(kmeans_module, "cpu_has_bf16_units", lambda: False)
    with pytest.raises(InputError, match="bf16 matrix units.*use dtype='float32' or device='cuda'"):
        KMeans(3, dtype="bfloat16", device="cpu").fit(np.random.RandomState(0).rand(20, 2))


@pytest.mark.skipif(not kmeans_module.cpu_has_bf16_units(), reason="this CPU has no bf16 matrix units (AMX/AVX512-BF16)")
@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_bfloat16_on_cpu_finds_the_groups_with_float32s_objective(algorithm):
    X, y = blobs(n=5000, k=10, d=64)
    f32 = KMeans(10, random_state=0, device="cpu", algorithm=algorithm).fit(X)
    b16 = KMeans(10, random_state=0, device="cpu", algorithm=algorithm, dtype="bfloat16").fit(X)
    assert adjusted_rand_score(y, b16.labels_) == 1.0
    assert b16.inertia_ == pytest.approx(f32.inertia_, rel=1e-3)  # the goal: objective within 0.1%
    assert b16.cluster_centers_.dtype == np.float32


@pytest.mark.skipif(not kmeans_module.cpu_has_bf16_units(), reason="this CPU has no bf16 matrix units (AMX/AVX512-BF16)")
@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_bfloat16_rows_rounded_once_give_what_rounding_every_pass_gives(algorithm, monkeypatch):
    # the bf16 copy of X is indexed by slices (full passes) and by gathered rows (Hamerly's
    # failing rows): any row mixed up there changes labels or centers
    X = _random_and_blobs()["random"]
    once = KMeans(30, random_state=0, device="cpu", algorithm=algorithm, dtype="bfloat16").fit(X)
    monkeypatch.setattr(KMeans, "_bf16_rows", lambda self, X, dev: None)
    each = KMeans(30, random_state=0, device="cpu", algorithm=algorithm, dtype="bfloat16").fit(X)
    assert once.n_iter_ > 2 and (algorithm == "lloyd" or (once.n_recomputed_[1:] < len(X)).any())
    np.testing.assert_array_equal(once.labels_, each.labels_)
    np.testing.assert_array_equal(once.cluster_centers_, each.cluster_centers_)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_agrees_with_cpu(dtype):
    X, y = blobs(n=5000, k=10, d=64)
    cpu = KMeans(10, random_state=0, device="cpu").fit(X)
    gpu = KMeans(10, random_state=0, device="cuda", dtype=dtype).fit(X)
    assert adjusted_rand_score(y, gpu.labels_) == 1.0
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-3)


def _random_and_blobs():
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((6000, 32), dtype=np.float32)
    centers = rng.standard_normal((30, 32), dtype=np.float32) * 3
    return {"random": noise, "blobs": centers[rng.integers(0, 30, 6000)] + noise}


@pytest.mark.parametrize("tighten", ["measured", "always", "never"])
@pytest.mark.parametrize("data", ["random", "blobs"])
def test_hamerly_gives_lloyds_labels_and_objective(data, tighten, monkeypatch):
    # failing rows are tightened first, or (when that does not pay) recomputed whole with a
    # probe that only measures: both give Lloyd's labels
    if tighten != "measured":
        monkeypatch.setattr(kmeans_module, "_TIGHTEN", -1.0 if tighten == "always" else float("inf"))
    X = _random_and_blobs()[data]
    init = X[np.random.RandomState(1).choice(len(X), 30, replace=False)]
    lloyd = KMeans(30, init=init, max_iter=40, tol=0, algorithm="lloyd", device="cpu").fit(X)
    ham = KMeans(30, init=init, max_iter=40, tol=0, device="cpu").fit(X)  # 'hamerly' is the default
    assert ham.n_iter_ == lloyd.n_iter_ > 5
    np.testing.assert_array_equal(ham.labels_, lloyd.labels_)
    assert ham.inertia_ == pytest.approx(lloyd.inertia_, rel=1e-6)
    np.testing.assert_allclose(ham.cluster_centers_, lloyd.cluster_centers_, rtol=1e-5, atol=1e-5)
    # the labels are the exact (float64) nearest centers of the final centers
    d2 = ((X[:, None, :].astype(np.float64) - ham.cluster_centers_[None].astype(np.float64)) ** 2).sum(-1)
    assert (d2[np.arange(len(X)), ham.labels_] <= d2.min(1) * (1 + 1e-5)).all()


def test_hamerly_recomputes_fewer_rows_after_the_first_iterations():
    X = _random_and_blobs()["blobs"]
    init = X[np.random.RandomState(1).choice(len(X), 30, replace=False)]
    km = KMeans(30, init=init, max_iter=40, tol=0, device="cpu").fit(X)
    rec = km.n_recomputed_
    assert len(rec) == km.n_iter_ and rec[0] == len(X)
    assert rec[-3:].max() < 0.2 * len(X) and rec.sum() < 0.5 * len(X) * km.n_iter_
    lloyd = KMeans(30, init=init, max_iter=40, tol=0, algorithm="lloyd", device="cpu").fit(X)
    np.testing.assert_array_equal(lloyd.n_recomputed_, np.full(lloyd.n_iter_, len(X)))


@pytest.mark.parametrize("window", [None, 700])
def test_centers_that_jump_are_computed_exactly_and_labels_stay_lloyds(monkeypatch, window):
    # two starting centers share blob 0 and none sits in the last blob: a few centers travel
    # far while the others barely move, so the next pass computes those few for every row
    if window:  # small windows and chunks: the partial pass crosses their boundaries
        monkeypatch.setattr(kmeans_module, "_WINDOW", window)
    rng = np.random.default_rng(3)
    means = (rng.standard_normal((32, 32)) * 2).astype(np.float32)
    X = means[rng.integers(0, 32, 6000)] + rng.standard_normal((6000, 32), dtype=np.float32)
    init = np.vstack([means[:31] + 0.3, means[:1] - 0.3]).astype(np.float32)
    ham = KMeans(32, init=init, max_iter=50, tol=0, batch_size=256 if window else None, device="cpu").fit(X)
    lloyd = KMeans(32, init=init, max_iter=50, tol=0, algorithm="lloyd", device="cpu").fit(X)
    assert len(ham.n_moved_centers_) == ham.n_iter_ and ham.n_moved_centers_.max() > 0
    assert ham.n_iter_ == lloyd.n_iter_ and not lloyd.n_moved_centers_.any()
    np.testing.assert_array_equal(ham.labels_, lloyd.labels_)
    assert ham.inertia_ == pytest.approx(lloyd.inertia_, rel=1e-6)


def test_hamerly_bounds_stay_exact_with_chunks_threads_and_empty_clusters(monkeypatch):
    # small windows and chunks exercise the gathered (sparse) and the whole-window (dense) paths
    monkeypatch.setattr(kmeans_module, "_WINDOW", 700)
    X, _ = blobs(n=3000, k=6, d=8, std=3.0)
    init = np.vstack([X[:5], [[1e4] * 8]]).astype(np.float32)  # the last center wins no point
    a = KMeans(6, init=init, batch_size=256, algorithm="lloyd", device="cpu").fit(X)
    b = KMeans(6, init=init, batch_size=256, device="cpu").fit(X)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-6) and b.n_iter_ == a.n_iter_
    assert np.bincount(b.labels_, minlength=6).min() > 0


def test_algorithm_parameter_is_checked():
    with pytest.raises(InputError, match="algorithm='elkan'"):
        KMeans(2, algorithm="elkan").fit(np.zeros((10, 2)))
    assert KMeans(2).get_params()["algorithm"] == "auto"  # Hamerly on the CPU, Lloyd on CUDA


def test_hamerly_on_a_float64_memmap_matches_lloyd_on_the_array(tmp_path, monkeypatch):
    monkeypatch.setattr(kmeans_module, "_DENSE", 1.1)  # always gather the unsettled rows (from the memmap)
    X, _ = blobs(n=2500, k=5, d=8, std=3.0)
    np.save(tmp_path / "x.npy", X.astype(np.float64))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    init = X[:5].copy()
    a = KMeans(5, init=init, algorithm="lloyd", device="cpu").fit(X)
    b = KMeans(5, init=init, batch_size=300, device="cpu").fit(mm)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-6) and b.n_recomputed_[1:].min() < len(X)


def test_auto_algorithm_is_hamerly_on_cpu_and_lloyd_on_cuda():
    """'auto' (the default): Hamerly's bounds on the CPU, plain Lloyd on CUDA (faster there:
    measured on an H200, docs/scaling.md (d)). Resolving needs no GPU."""
    X = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    km = KMeans(5, random_state=0, device="cpu")
    assert km.algorithm == "auto"
    assert km._algorithm(torch.device("cpu")) == "hamerly" and km._algorithm(torch.device("cuda")) == "lloyd"
    assert KMeans(5, algorithm="hamerly")._algorithm(torch.device("cuda")) == "hamerly"
    auto = km.fit(X)
    ham = KMeans(5, random_state=0, device="cpu", algorithm="hamerly").fit(X)
    assert np.array_equal(auto.labels_, ham.labels_) and auto.inertia_ == ham.inertia_
    with pytest.raises(InputError, match="'auto', 'hamerly' or 'lloyd'"):
        KMeans(5, algorithm="elkan").fit(X)


@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_cache_sized_blocks_give_what_one_block_gives(algorithm, monkeypatch):
    # on the CPU each thread's piece is computed in blocks of _SUB_BYTES; blocks of 64 rows
    # (the floor), with a remainder in every piece, must give the one-block result exactly
    X = _random_and_blobs()["blobs"][:5000]
    init = X[np.random.RandomState(2).choice(len(X), 30, replace=False)]

    def fit(sub_bytes):
        monkeypatch.setattr(kmeans_module, "_SUB_BYTES", sub_bytes)
        km = KMeans(30, init=init, max_iter=40, tol=0, batch_size=1000, algorithm=algorithm, device="cpu").fit(X)
        return km, km.predict(X[:777]), km.transform(X[:777]), km._sub_rows(X.shape[1])

    (one, p1, t1, s1), (many, p2, t2, s2) = fit(2**40), fit(1)
    assert s1 >= len(X) and s2 == 64
    assert many.n_iter_ == one.n_iter_ > 5
    np.testing.assert_array_equal(many.labels_, one.labels_)
    np.testing.assert_allclose(many.cluster_centers_, one.cluster_centers_, rtol=1e-6, atol=1e-6)
    assert many.inertia_ == pytest.approx(one.inertia_, rel=1e-6)
    np.testing.assert_array_equal(p2, p1)
    np.testing.assert_allclose(t2, t1, rtol=1e-5, atol=1e-4)
    d2 = ((X[:, None, :].astype(np.float64) - many.cluster_centers_[None].astype(np.float64)) ** 2).sum(-1)
    assert (d2[np.arange(len(X)), many.labels_] <= d2.min(1) * (1 + 1e-5)).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [10, 37])
def test_both_layouts_of_the_distance_block_give_the_nearest_and_second_nearest(dtype, k):
    # on the CPU a block is computed as (k, n) and reduced across centers (rows), or as (n, k)
    # (_centers_by_rows): both must give each row's nearest center, its value, and the minimum
    # over the other centers
    if dtype == "bfloat16" and not kmeans_module.cpu_has_bf16_units():
        pytest.skip("dtype='bfloat16' needs a CPU with AMX or AVX512-BF16")
    rng = np.random.default_rng(11)
    d = 48
    km = KMeans(k, dtype=dtype)
    C = torch.from_numpy(rng.standard_normal((k, d), dtype=np.float32))
    terms = km._terms(C)
    tol = 1e-4 if dtype == "float32" else 3e-2
    sizes = (100, 512, 513, 2000)
    layouts = {kmeans_module._centers_by_rows(n, k) for n in sizes}
    assert layouts == ({True} if k <= 32 else {True, False})
    for n in sizes:
        X = rng.standard_normal((n, d), dtype=np.float32)
        mins, labels, second = km._nearest_block(torch.from_numpy(X), terms, second=True)
        d2 = ((X[:, None, :].astype(np.float64) - C.numpy()[None].astype(np.float64)) ** 2).sum(-1)
        x_sq = (X.astype(np.float64) ** 2).sum(1)
        order = np.sort(d2, axis=1)
        rows = np.arange(n)
        assert labels.shape == (n,) and mins.shape == (n,) and second.shape == (n,)
        assert (d2[rows, labels.numpy()] <= order[:, 0] + tol * (1 + order[:, 0])).all()
        np.testing.assert_allclose(mins.numpy() + x_sq, d2[rows, labels.numpy()], rtol=tol, atol=tol * 10)
        others = d2.copy()
        others[rows, labels.numpy()] = np.inf
        np.testing.assert_allclose(second.numpy() + x_sq, others.min(1), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_arithmetic_between_passes_runs_on_one_thread(algorithm, monkeypatch):
    # an OpenMP fork in the calling thread between passes leaves libgomp's worker spinning on
    # a core the next pass needs (docs/scaling.md (h10)): terms and center updates run alone
    seen = []
    terms = KMeans._terms

    def spy(self, centers, exact=False):
        seen.append(torch.get_num_threads())
        return terms(self, centers, exact)

    monkeypatch.setattr(KMeans, "_terms", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X, _ = blobs(n=20000, k=8, d=64, std=3.0)  # n * d * k above _SMALL_WORK: threaded passes
        assert X.shape[0] * X.shape[1] * 32 >= kmeans_module._SMALL_WORK
        KMeans(32, max_iter=5, tol=0, algorithm=algorithm, device="cpu", random_state=0).fit(X)
        assert torch.get_num_threads() == 2  # restored for the caller
    finally:
        torch.set_num_threads(before)
    assert len(seen) >= 5 and set(seen) == {1}
