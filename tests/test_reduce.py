"""The reducer (L2 -> PCA -> whiten -> L2) and the UMAP embedding."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs

from visclust.evaluate import hungarian_accuracy
from visclust.exceptions import InputError
from visclust.reduce import Reducer, l2_normalize, umap_embedding


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).normal(size=(500, 40)).astype(np.float32) * np.linspace(5, 0.1, 40)


def test_output_is_unit_length_with_the_requested_dimensions(features):
    r = Reducer(16).fit(features)
    Z = r.transform(features)
    assert Z.shape == (500, 16) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5)
    assert r.n_components_ == 16
    assert np.all(np.diff(r.explained_variance_ratio_) <= 1e-7)  # sorted by variance


def test_whitening_gives_every_component_the_same_variance(features):
    Z = Reducer(8, whiten=True, normalize=False).fit(features).transform(features)
    np.testing.assert_allclose(Z.std(0, ddof=1), 1, rtol=1e-3)
    Zp = Reducer(40, whiten=False, normalize=False).fit(features).transform(features)  # stds 5 ... 0.1
    assert Zp.std(0)[0] > 5 * Zp.std(0)[-1]


def test_components_without_variance_are_dropped():
    """Constant pixels (sklearn digits has some) must not be whitened into noise."""
    X = load_digits().data
    r = Reducer(64).fit(X)
    assert r.n_components_ < 64
    assert np.isfinite(r.transform(X)).all()
    assert r.scale_.min() > 1e-3 * r.scale_.max()


def test_no_pca_keeps_the_normalised_features(features):
    Z = Reducer(None).fit(features).transform(features)
    np.testing.assert_allclose(Z, l2_normalize(features), atol=1e-6)


def test_arrays_round_trip_gives_the_same_transform(features):
    r = Reducer(10).fit(features)
    r2 = Reducer.from_arrays(r.get_params(), r.to_arrays())
    np.testing.assert_array_equal(r.transform(features), r2.transform(features))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "no rows"),
    (np.zeros(5), r"\(n_samples, n_features\)"),
    (np.array([[1.0, np.nan]]), "NaN or infinity"),
])
def test_bad_feature_matrices_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        Reducer(2).fit(bad)


def test_wrong_feature_count_at_transform(features):
    r = Reducer(4).fit(features)
    with pytest.raises(InputError, match="40"):
        r.transform(features[:, :10])


def test_bad_n_components():
    with pytest.raises(InputError, match="positive integer or None"):
        Reducer(0).fit(np.ones((10, 3)))


def test_umap_embedding_keeps_separated_groups_apart():
    from sklearn.cluster import KMeans

    X, y = make_blobs(300, centers=3, n_features=20, cluster_std=1.0, random_state=0)
    E = umap_embedding(X, n_components=4, random_state=0)
    assert E.shape == (300, 4) and E.dtype == np.float32
    assert hungarian_accuracy(y, KMeans(3, n_init=3, random_state=0).fit_predict(E)) == 1.0


@pytest.fixture
def parallel_umap(monkeypatch):
    """umap_embeddings' child processes from 100 rows on, two at a time (three CPUs) whatever the machine."""
    from visclust import reduce

    monkeypatch.setattr(reduce, "UMAP_PARALLEL_ROWS", 100)
    monkeypatch.setattr(reduce, "_cpu_count", lambda: 3)
    return reduce


def test_umap_embeddings_in_child_processes_equal_the_sequential_ones(parallel_umap):
    X, _ = make_blobs(300, centers=3, n_features=8, random_state=0)
    X = X.astype(np.float32)
    seeds = [0, 1000, 2000, 3000]  # two children, the first and the fourth here
    side_by_side = parallel_umap.umap_embeddings(X, seeds, n_components=3)
    for s, E in zip(seeds, side_by_side):
        np.testing.assert_array_equal(E, umap_embedding(X, n_components=3, random_state=s))


def test_umap_children_on_few_distinct_rows_give_fewer_components_without_a_warning(parallel_umap):
    """7 distinct rows 30 times each: each embedding has 5 components (distinct rows - 2);
    the children's embeddings were refused as the wrong shape and computed again here, with a
    warning, until the shape check allowed fewer components (2026-12-07)."""
    import warnings

    X = np.repeat(np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32), 30, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        side_by_side = parallel_umap.umap_embeddings(X, [0, 1000, 2000], n_components=10)
    for s, E in zip([0, 1000, 2000], side_by_side):
        assert E.shape == (210, 5)
        np.testing.assert_array_equal(E, umap_embedding(X, n_components=10, random_state=s))


def test_a_failed_umap_child_is_redone_here_with_a_warning(parallel_umap, monkeypatch):
    monkeypatch.setattr(parallel_umap, "_UMAP_CHILD", "import sys\nsys.exit('out of memory, say')\n")
    X, _ = make_blobs(300, centers=3, n_features=8, random_state=0)
    X = X.astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"a UMAP child process failed \(out of memory, say\); computing"):
        E = parallel_umap.umap_embeddings(X, [0, 7], n_components=3)
    np.testing.assert_array_equal(E[1], umap_embedding(X, n_components=3, random_state=7))


def test_a_hung_umap_child_is_killed_and_redone_here(parallel_umap, monkeypatch):
    """A child that never finishes must not hold the fit forever: past the grace time it is
    killed and its embedding computed here."""
    monkeypatch.setattr(parallel_umap, "_UMAP_CHILD", "import time\ntime.sleep(600)\n")
    monkeypatch.setattr(parallel_umap, "UMAP_CHILD_GRACE_S", 1.0)
    X, _ = make_blobs(300, centers=3, n_features=8, random_state=0)
    X = X.astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"a UMAP child process failed \(still running 1 s after .*killed\)"):
        E = parallel_umap.umap_embeddings(X, [0, 7], n_components=3)
    np.testing.assert_array_equal(E[1], umap_embedding(X, n_components=3, random_state=7))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_umap_children_die_with_the_process_that_started_them(tmp_path):
    """kill -9 of a fit must not leave its UMAP children running."""
    import os
    import signal
    import subprocess
    import textwrap
    import time

    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent("""
        import os, time
        import numpy as np
        from visclust import reduce
        reduce.UMAP_PARALLEL_ROWS = 10
        reduce._cpu_count = lambda: 2
        reduce._UMAP_CHILD = (
            "import os, time\\n"
            "open(os.environ['PIDFILE'], 'w').write(str(os.getpid()))\\n"
            "time.sleep(600)\\n")
        reduce.umap_embedding = lambda *a, **k: time.sleep(600)  # this process is busy too
        reduce.umap_embeddings(np.random.default_rng(0).normal(size=(20, 4)), [0, 1])
        """)
    temp = tmp_path / "temp"
    temp.mkdir()
    fit = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PIDFILE=str(pidfile), TMPDIR=str(temp)))
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the child process did not start")
        child = int(pidfile.read_text())
    finally:
        fit.kill()
        fit.wait()
    def alive(pid):  # a killed orphan may stay a zombie until init reaps it: that counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    for _ in range(300):  # the child is an orphan now: gone once the kernel has delivered its signal
        if not alive(child):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the UMAP child outlived the process that started it")
    # the killed fit could not delete its temporary folder (its data, the size of X): the
    # next fit's does
    left = [p.name for p in temp.iterdir()]
    assert len(left) == 1 and left[0].startswith(f"visclust-umap-{fit.pid}-")
    import tempfile

    from visclust.io import work_folder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(temp))
        with work_folder("visclust-umap-"):
            pass
    assert list(temp.iterdir()) == []


def test_distinct_rows_counts_whole_only_when_a_spread_sample_has_too_few():
    from visclust.reduce import distinct_rows

    X = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    assert distinct_rows(X) == 1000
    assert 100 <= distinct_rows(X, enough=100) < 1000  # 400 evenly spaced rows were enough
    copies = np.repeat(X[:40], 30, axis=0)
    assert distinct_rows(copies, enough=100) == distinct_rows(copies) == 40
    assert distinct_rows(np.zeros((5, 0))) == 1 and distinct_rows(np.zeros((0, 3))) == 0


def test_copies_of_an_image_count_once_in_the_whitening_cap_and_in_umap():
    """40 images 10 times over are 40 samples: whitening keeps one dimension per 10 distinct
    images (it kept 20 of 20 here, 4 without the copies), and UMAP embeds each distinct row
    once, so copies land on one point and the distinct rows exactly where they land alone
    (copies had filled each other's neighbour lists)."""
    X = np.random.default_rng(0).normal(size=(40, 20)).astype(np.float32)
    assert Reducer(64, whiten=True).fit(np.repeat(X, 10, axis=0)).n_components_ == 4
    assert Reducer(64, whiten=True).fit(X).n_components_ == 4
    assert Reducer(64, whiten=False).fit(np.repeat(X, 10, axis=0)).n_components_ == 20
    E = umap_embedding(np.repeat(X, 3, axis=0), 5, random_state=0)
    np.testing.assert_array_equal(E.reshape(40, 3, 5), np.repeat(umap_embedding(X, 5, random_state=0)[:, None], 3, axis=1))
    order = np.random.default_rng(1).permutation(120)  # copies anywhere: each still gets its image's point
    E2 = umap_embedding(np.repeat(X, 3, axis=0)[order], 5, random_state=0)
    image = order // 3  # which of the 40 images each row is
    assert all((E2[image == m] == E2[image == m][0]).all() for m in range(40))
    assert len(np.unique(E2, axis=0)) == 40


def test_umaps_compiled_code_is_cached_on_disk_and_gives_the_same_embedding(tmp_path):
    """A second process loads UMAP's machine code from numba's cache instead of compiling it
    again, and its embedding is the first process's, bit for bit."""
    import os
    import subprocess
    import textwrap

    script = textwrap.dedent("""
        import sys
        import numpy as np
        from numba.core.dispatcher import Dispatcher
        from visclust.reduce import umap_embedding
        X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
        np.save(sys.argv[1], umap_embedding(X, n_components=2, random_state=3))
        # UMAP's layout optimiser: compiled without numba's cache by umap-learn itself
        from umap.layouts import _nb_optimize_layout_euclidean_single_epoch as f
        assert isinstance(f, Dispatcher)
        print(sum(f.stats.cache_hits.values()))
        """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    hits = []
    for run in ("first", "second"):
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{run}.npy")], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        hits.append(int(r.stdout.split()[-1]))
    assert hits[0] == 0 and hits[1] > 0, hits
    first, second = np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy")
    np.testing.assert_array_equal(first, second)
    # a damaged cache entry is compiled again, not a failed fit: the entries and indexes of one
    # function of each kind, the layout optimiser (cached by us) and umap-learn's own
    # cache=True `rdist` (loaded while `import umap` runs); damaging all 45 entries would only
    # add 20 s of compiling to the suite
    damaged = [f for f in (tmp_path / "numba").rglob("*") if f.suffix in (".nbc", ".nbi")
               and ("_optimize_layout_euclidean_single_epoch" in f.name or "rdist" in f.name)]
    assert {f.suffix for f in damaged if "_optimize_layout_euclidean_single_epoch" in f.name} == {".nbc", ".nbi"}
    assert {f.suffix for f in damaged if "rdist" in f.name} == {".nbc", ".nbi"}
    for f in damaged:
        f.write_bytes(b"garbage\n")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "third.npy")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "third.npy"), first)
    X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    np.testing.assert_array_equal(first, umap_embedding(X, n_components=2, random_state=3))


@pytest.mark.parametrize("setting, switched_on", [(None, True), ("0", False)])
def test_visclust_numba_cache_0_leaves_umaps_cache_off(setting, switched_on):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "VISCLUST_NUMBA_CACHE"}
    if setting is not None:
        env["VISCLUST_NUMBA_CACHE"] = setting
    script = "import umap\nfrom visclust import reduce\nprint(reduce._cache_umap_jit())\n"
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (int(r.stdout.split()[-1]) > 0) == switched_on, r.stdout


@pytest.mark.parametrize("rows", [3, 5, 8, 11, 12])
def test_umap_on_a_handful_of_rows_gives_fewer_components_not_scipys_error(rows):
    """UMAP's spectral start needs more rows than components + 1: 10 components on 8 images
    raised SciPy's TypeError out of `fit --space umap`."""
    X = np.random.default_rng(0).normal(size=(rows, 6)).astype(np.float32)
    E = umap_embedding(X, n_components=10, random_state=0)
    assert E.shape == (rows, min(10, rows - 2)) and np.isfinite(E).all()


def test_umap_on_two_rows_says_to_use_the_pca_space():
    with pytest.raises(InputError, match="at least 3 images.*--space pca"):
        umap_embedding(np.eye(2, 6, dtype=np.float32))


@pytest.mark.parametrize("n_neighbors, metric", [(15, "cosine"), (5, "cosine"), (15, "euclidean")])
def test_umap_embedding_below_4096_rows_equals_umaps_own_exact_path(n_neighbors, metric):
    """The exact neighbours are computed in compiled code and handed to UMAP: the embedding
    must be the one umap-learn computes itself, bit for bit (on the distinct rows: copies of a
    row are embedded once and get its point)."""
    import umap

    X, _ = make_blobs(400, centers=4, n_features=12, random_state=2)
    X = X.astype(np.float32)
    X[1:4] = X[0]  # duplicate rows: embedded once
    X[4:6] = X[6] * np.array([[2.0], [3.0]], np.float32)  # distinct rows, but ties at cosine distance 0
    ours = umap_embedding(X, n_components=3, n_neighbors=n_neighbors, random_state=5, metric=metric)
    distinct = [0] + list(range(4, 400))
    theirs = umap.UMAP(n_components=3, n_neighbors=n_neighbors, min_dist=0.0, metric=metric, random_state=5,
                       low_memory=True).fit_transform(X[distinct])
    np.testing.assert_array_equal(ours[distinct], theirs.astype(np.float32))
    np.testing.assert_array_equal(ours[1:4], ours[[0, 0, 0]])


def test_whitening_few_rows_keeps_two_dimensions_not_a_sign():
    # 10 rows per whitened dimension would leave 8 rows one: after the final L2 only its sign.
    X = np.random.default_rng(0).normal(size=(8, 50)).astype(np.float32)
    Z = Reducer(64, whiten=True).fit(X).transform(X)
    assert Z.shape == (8, 2) and len(np.unique(Z.round(4), axis=0)) == 8
    X40 = np.random.default_rng(1).normal(size=(40, 50)).astype(np.float32)
    assert Reducer(64, whiten=True).fit(X40).n_components_ == 4  # 40 rows: 10 per dim
    assert Reducer(64, whiten=True).fit(np.vstack([X] * 5)).n_components_ == 2  # 8 images 5 times: 8 samples


def test_residual_is_the_distance_from_the_principal_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(20, 3)))[0].T  # 3 orthonormal rows in 20-d
    X = (rng.normal(size=(200, 3)) @ basis + 5 * basis[0]).astype(np.float32)
    r = Reducer(3, whiten=False, normalize=False).fit(X)
    assert np.abs(r.residual(X)).max() < 1e-4
    off = np.zeros(20, np.float32)
    off[np.argmin(np.abs(basis).sum(0))] = 1.0
    off -= basis.T @ (basis @ off)  # a unit step orthogonal to the subspace
    step = off / np.linalg.norm(off)
    np.testing.assert_allclose(r.residual(X[:5] + 2 * step), 2.0, rtol=1e-4)


def test_l2_normalize_survives_values_whose_squares_leave_float32():
    from visclust.reduce import l2_normalize

    X = np.array([[1e30, 2e30], [1e-25, 0.0], [0.0, 0.0], [3.0, 4.0], [-1e-30, 1e-30]], np.float32)
    np.testing.assert_allclose(l2_normalize(X), [[0.4472136, 0.8944272], [1, 0], [0, 0], [0.6, 0.8],
                                                 [-0.7071068, 0.7071068]], rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(np.array([[1e39, 1e39]])), [[0.7071068, 0.7071068]], rtol=1e-6)  # float64


def test_the_pipeline_does_not_depend_on_the_scale_of_the_features():
    from sklearn.datasets import make_blobs

    from visclust.model import FeatureClusterer

    X, _ = make_blobs(200, n_features=8, centers=3, random_state=0)
    X = X - X.min() + 1  # positive, as a network's features
    base = FeatureClusterer(3, umap_components=None).fit(X).labels_
    for scale in (1e25, 1e-25):
        np.testing.assert_array_equal(FeatureClusterer(3, umap_components=None).fit(X * scale).labels_, base)
