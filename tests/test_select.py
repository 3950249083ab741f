"""The label-free choice of the clustering pipeline: stability across runs, centrality among the candidates."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from visclust.cluster import select_n_clusters
from visclust.evaluate import hungarian_accuracy
from visclust.exceptions import InputError
from visclust.select import (Candidate, adjusted_rand, agreement, align_to, best_k, centrality, choose_n_clusters,
                             consensus_labels, copy_retrieval, paired_test,
                             describe_k_choice, medoid_run, most_central, neighbour_support, other_levels,
                             select_pipeline, stability, subsample_run)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(400, centers=4, n_features=8, cluster_std=0.8, center_box=(-10, 10), random_state=0)
    return X.astype(np.float32), y


def test_candidate_parse_and_errors():
    assert Candidate.parse("umap+gmm") == Candidate("umap", "gmm")
    assert Candidate("pca", "kmeans").name == "pca+kmeans"
    with pytest.raises(InputError, match="SPACE\\+METHOD"):
        Candidate.parse("umap")
    with pytest.raises(InputError, match="unknown clustering space 'tsne'"):
        Candidate.parse("tsne+kmeans")
    with pytest.raises(InputError, match="unknown clustering method"):
        Candidate("pca", "dbscan")


def test_align_to_undoes_a_renumbering():
    ref = np.array([0, 0, 1, 1, 2, 2, -1])
    assert align_to(np.array([2, 2, 0, 0, 1, 1, -1]), ref).tolist() == ref.tolist()
    assert agreement([np.array([1, 1, 0, 0, 2, 0, -1])], ref).tolist() == [1, 1, 1, 1, 1, 0, 1]


def test_stability_is_one_for_renumbered_copies_and_low_for_random_partitions():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 500)
    assert stability([a, (a + 1) % 4, (a + 2) % 4]) == pytest.approx(1.0)
    assert abs(stability([rng.integers(0, 4, 500) for _ in range(3)])) < 0.05


def test_adjusted_rand_is_scikit_learns_to_the_last_bit():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    cases = [([], []), ([0], [5]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([-1, -1, 0, 1, 1], [3, 3, 9, 9, 7]),
             ([10**12, 5, 5], [1, 1, 2]), (np.arange(3000), np.arange(3000)[::-1] // 2),
             (["cat", "dog", "dog"], [0.5, 0.5, 1.5])]
    for n, k in ((2000, 10), (500, 3), (3000, 900)):
        a = rng.integers(0, k, n)
        cases += [(a, (a + (rng.random(n) < 0.3) * rng.integers(0, k, n)) % k), (a.astype(np.int32), a - 1)]
    for a, b in cases:
        assert adjusted_rand(a, b) == adjusted_rand_score(a, b)
    with pytest.raises(InputError, match="different lengths"):
        adjusted_rand([0, 1], [0])


def test_medoid_run_is_the_one_agreeing_with_the_others():
    a = np.repeat([0, 1, 2], 50)
    odd = np.random.default_rng(1).integers(0, 3, 150)
    assert medoid_run([odd, a, a.copy()]) in (1, 2)


def test_subsample_run_labels_every_row(blobs):
    X, y = blobs
    labels = subsample_run(X, 4, "agglomerative", random_state=0, subsample=0.5)
    assert (labels >= 0).all()
    assert hungarian_accuracy(y, labels) == 1.0


def test_real_structure_is_stable_and_structureless_data_is_not(blobs):
    X, _ = blobs
    noise = np.random.default_rng(0).normal(size=X.shape).astype(np.float32)
    on_blobs = select_pipeline(X, 4, ["pca+kmeans"], n_runs=3)
    on_noise = select_pipeline(noise, 4, ["pca+kmeans"], n_runs=3)
    assert on_blobs.scores["pca+kmeans"] > 0.95
    assert on_noise.scores["pca+kmeans"] < 0.8


def test_the_most_central_candidate_wins_and_its_medoid_run_is_returned(blobs):
    X, y = blobs
    sel = select_pipeline(X, 4, ["pca+kmeans", "pca+agglomerative", "pca+spectral"], n_runs=3, random_state=0,
                          consensus=False)
    assert set(sel.centrality) == set(sel.scores)
    assert sel.centrality[sel.best.name] == max(sel.centrality.values())
    assert sel.labels is sel.runs[sel.best.name][sel.medoid]
    assert all(len(runs) == 3 for runs in sel.runs.values())
    assert hungarian_accuracy(y, sel.labels) == 1.0


def _runs_with_own_mistakes(seed=0):
    """Three runs over 4 groups of 40 rows, each with its own 6 rows put in the wrong group
    (and its own cluster numbers), so no run is right but every row is right in most runs."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), 40)
    wrong = rng.permutation(len(truth))[:18].reshape(3, 6)
    runs = []
    for r in range(3):
        labels = truth.copy()
        labels[wrong[r]] = (labels[wrong[r]] + 1 + r) % 4
        runs.append(rng.permutation(4)[labels])
    return truth, runs


def test_the_consensus_of_runs_corrects_each_runs_own_mistakes():
    truth, runs = _runs_with_own_mistakes()
    assert all(hungarian_accuracy(truth, r) == 1 - 6 / 160 for r in runs)
    labels = consensus_labels(runs, 4, random_state=0)
    assert hungarian_accuracy(truth, labels) == 1.0
    # where it cannot apply, None: the caller keeps the medoid run
    assert consensus_labels(runs[:2], 4) is None                     # two runs have no majority
    assert consensus_labels([runs[0]] * 3, 4) is None                # identical: nothing to gain
    assert consensus_labels([np.where(truth == 0, -1, truth)] + runs[1:], 4) is None  # HDBSCAN noise
    assert consensus_labels(runs, 200) is None                       # fewer distinct rows than clusters
    assert consensus_labels(runs, 3) is None      # more clusters than asked for (HDBSCAN, its own number)


def test_select_pipeline_returns_the_consensus_of_the_winners_runs():
    # a uniform square cut in 5: K-means' runs on 60% subsamples cut it differently
    X = np.random.default_rng(0).uniform(0, 1, (300, 2)).astype(np.float32)
    sel = select_pipeline(X, 5, ["pca+kmeans"], n_runs=3, random_state=0, subsample=0.6)
    runs = sel.runs["pca+kmeans"]
    medoid = runs[sel.medoid]

    def disagreement(labels):  # K-means' objective on the runs' one-hot labels
        total = 0.0
        for r in runs:
            m = np.zeros((labels.max() + 1, r.max() + 1))
            np.add.at(m, (labels, r), 1)
            total += (m ** 2 / np.maximum(m.sum(1, keepdims=True), 1)).sum()
        return len(labels) * len(runs) - total
    assert stability(runs) < 1 and not any(sel.labels is r for r in runs)
    assert disagreement(sel.labels) < disagreement(medoid)


def test_select_pipeline_argument_errors(blobs):
    X, _ = blobs
    with pytest.raises(InputError, match="n_runs must be at least 2"):
        select_pipeline(X, 4, ["pca+kmeans"], n_runs=1)
    with pytest.raises(InputError, match="no candidate"):
        select_pipeline(X, 4, [])


@pytest.mark.parametrize("true_k", [2, 3, 5])
def test_choose_n_clusters_finds_the_number_of_blobs(true_k):
    X, _ = make_blobs(400, centers=true_k, n_features=6, cluster_std=0.6, center_box=(-12, 12), random_state=3)
    k, scores = choose_n_clusters([X], (2, 8))
    assert k == true_k
    assert set(scores) == set(range(2, 9)) and max(scores, key=scores.get) == k


def test_choose_n_clusters_counts_copies_of_a_row_once():
    """Four blobs of 40 points, each 10 times: every subsample held a copy of every point and
    K = 2 looked exactly reproducible; the copies must give the scores of the 40 points. With
    too few distinct rows to subsample (3 x 12), all rows are used, as before."""
    X, _ = make_blobs(40, centers=4, n_features=6, random_state=0)
    once = choose_n_clusters([X], (2, 8))
    copies = choose_n_clusters([np.repeat(X, 10, axis=0)], (2, 8))
    assert once[0] == copies[0] == 4 and copies[1] == pytest.approx(once[1])
    three = np.repeat(np.eye(3, 5), 12, axis=0)
    assert choose_n_clusters([three], (2, 6))[0] == 3


def _two_families(cluster_std: float):
    """800 points in two far-apart families of 4 groups each (8 groups), and their groups."""
    rng = np.random.default_rng(0)
    sub = rng.normal(0, 5, (4, 6))
    shift = np.array([40, 0, 0, 0, 0, 0])
    centers = np.concatenate([sub + shift, sub * [1, -1, 1, -1, 1, -1] - shift])
    return make_blobs(800, centers=centers, cluster_std=cluster_std, random_state=0)


def test_choose_n_clusters_is_not_fooled_by_a_dominant_coarse_split():
    # Two far-apart families of 4 groups each: the silhouette prefers the 2 families, the
    # stability against a structureless reference finds the 8 groups.
    X, _ = _two_families(1.0)
    assert select_n_clusters(X, (2, 12), metric="euclidean")[0] == 2
    k, scores = choose_n_clusters([X], (2, 12))
    assert k == 8
    # the coarse level (the two families) is still offered as a next best level
    assert 2 in other_levels(scores) and 8 not in other_levels(scores)
    line = describe_k_choice(scores)
    assert line.startswith("--clusters auto chose 8 of 2..12 (score ") and "; next best: " in line and "2 (" in line


def test_an_exact_coarse_split_does_not_outrank_a_finer_level_reproduced_almost_exactly():
    # The same two families of 4 groups, each group wider: the families (k = 2) are still
    # reproduced exactly, the groups within them almost. A Gaussian reference is split in two
    # almost as reproducibly (disagreement ~0.02), so the exact k = 2 is little evidence; until
    # 2026-12-07 any exact k won and this chose 2.
    X, truth = _two_families(2.4)
    k, scores = choose_n_clusters([X], (2, 12))
    assert scores[2] < 100 < scores[k] and k >= 6
    assert 2 in other_levels(scores)  # the families are still offered as a level
    # the finer level chosen agrees with the 8 groups far better than the 2 families do
    ari = {j: adjusted_rand_score(truth, KMeans(j, n_init=10, random_state=0).fit_predict(X)) for j in (2, k)}
    assert ari[k] > ari[2] + 0.3


def test_of_the_partitions_reproduced_exactly_the_finest_ranks_first():
    # Well-separated groups are reproduced exactly at their number and when whole groups are
    # merged; the reference's disagreement at a smaller k can be the larger (one sample), and
    # each exact k is scored against the largest up to it, so the finest exact k still wins.
    X, _ = make_blobs(600, centers=6, n_features=5, cluster_std=0.3, center_box=(-30, 30), random_state=4)
    k, scores = choose_n_clusters([X], (2, 10))
    assert k == 6
    assert best_k({2: 5.0, 3: 7.0, 4: 7.0, 5: 1.0}) == 4  # a tie goes to the larger k


def test_other_levels_are_the_local_maxima_after_the_best():
    scores = {2: 1.0, 3: 3.0, 4: 1.5, 5: 2.5, 6: 1.0, 7: 1.2, 8: 0.9}
    assert other_levels(scores) == [5, 7] and other_levels(scores, n=1) == [5]
    assert other_levels({4: 2.0, 2: 3.0, 3: 1.0}) == [4]  # ends count; the order of the dict does not matter
    assert other_levels({2: 5.0}) == [] and other_levels({}) == []
    assert describe_k_choice({2: 1.0, 3: 2.0, 4: 1.0}) == "--clusters auto chose 3 of 2..4 (score 2.00)"


def test_choose_n_clusters_uses_every_embedding_and_checks_its_input():
    X, _ = make_blobs(300, centers=3, n_features=4, cluster_std=0.5, random_state=1)
    assert choose_n_clusters([X, X[:, ::-1].copy()], (2, 6), n_runs=4)[0] == 3
    with pytest.raises(InputError, match="same rows"):
        choose_n_clusters([X, X[:10]], (2, 6))
    with pytest.raises(InputError, match="2 <= min <= max"):
        choose_n_clusters([X], (1, 6))
    with pytest.raises(InputError, match="too few"):
        choose_n_clusters([X[:6]], (4, 6))


def test_neighbour_support_tells_groups_the_space_shows_from_ones_it_does_not():
    X, y = make_blobs(600, centers=4, n_features=6, cluster_std=1.0, random_state=2)
    assert neighbour_support(X, y) > 0.95  # the blobs: every neighbour agrees
    other = np.random.default_rng(0).integers(0, 4, len(X))  # a partition the space knows nothing of
    assert abs(neighbour_support(X, other)) < 0.1
    # half the points of every blob moved to another group: about half the support
    half = np.where(np.arange(len(X)) % 2 == 0, y, (y + 1) % 4)
    assert 0.1 < neighbour_support(X, half) < 0.6
    # noise (-1) is left out; the same with or without it
    noisy = np.where(np.arange(len(X)) % 10 == 0, -1, y)
    assert neighbour_support(X, noisy) > 0.95
    assert np.isnan(neighbour_support(X[:4], y[:4]))  # too few rows to hold any out


def test_choose_n_clusters_on_a_one_dimensional_embedding():
    # A few images can be reduced to one dimension; the reference blob is then 1-d too.
    E = np.concatenate([np.zeros(20), np.full(20, 5.0), np.full(20, 10.0)])[:, None]
    E += np.random.default_rng(0).normal(scale=0.2, size=E.shape)
    k, scores = choose_n_clusters([E], (2, 5))
    assert k == 3 and set(scores) == {2, 3, 4, 5}


def test_choose_n_clusters_stops_where_the_rows_run_out_of_distinct_points():
    # 4 distinct points, 50 copies each (a folder of duplicated images): K-means at k > 4
    # returns 4 clusters in every run, which once scored as "exact" and chose k = 30.
    E = np.repeat(np.random.default_rng(0).normal(size=(4, 6)) * 5, 50, axis=0)
    k, scores = choose_n_clusters([E], (2, 30))
    assert k == 4 and max(scores) == 4


def test_too_few_rows_for_auto_k_says_how_many_are_needed():
    X = np.random.default_rng(0).normal(size=(5, 3))
    assert choose_n_clusters([X], (2, 30))[0] == 2  # five rows are enough
    with pytest.raises(InputError, match=r"^4 samples are too few .* \(at least 5 are needed\)"):
        choose_n_clusters([X[:4]], (2, 30))
    with pytest.raises(InputError, match=r"^1 sample is too few"):
        choose_n_clusters([X[:1]], (2, 30))


def test_a_partition_one_candidate_reproduces_alone_loses_to_the_one_the_others_share():
    """UMAP on a few hundred images can settle on a wrong partition and repeat it exactly: the
    most stable candidate is then alone in it. Centrality keeps the partition the other
    candidates come near, and still counts each candidate's stability as one voice."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 50)
    alone = np.roll(truth, 25)  # half of each group moved: another partition, reproduced exactly

    def noisy(share):
        labels = truth.copy()
        flip = rng.random(len(truth)) < share
        labels[flip] = rng.integers(0, 3, flip.sum())
        return labels

    runs = {"stable-but-alone": [alone, alone.copy(), alone.copy()],
            "a": [noisy(0.1) for _ in range(3)], "b": [noisy(0.1) for _ in range(3)]}
    stab = {k: stability(v) for k, v in runs.items()}
    assert max(stab, key=stab.get) == "stable-but-alone"  # the old rule's choice
    central = centrality(runs, stab)
    assert most_central(central, stab) in ("a", "b")
    assert central["stable-but-alone"] < min(central["a"], central["b"])
    # keys may be any hashable, e.g. (view, pipeline), and a lone candidate is its stability
    assert centrality({("v", "x"): runs["a"]}, {("v", "x"): stab["a"]}) == {("v", "x"): stab["a"]}
    # ties: the more stable, then the first
    assert most_central({"p": 0.5, "q": 0.5}, {"p": 0.7, "q": 0.9}) == "q"
    assert most_central({"p": 0.5, "q": 0.5}, {"p": 0.9, "q": 0.9}) == "p"


def test_copy_retrieval_finds_each_copy_s_own_original_among_all():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    rows = rng.choice(200, 50, replace=False)
    near = X[rows] + 0.05 * rng.normal(size=(50, 16)).astype(np.float32)
    assert copy_retrieval(X, near, rows).all()
    assert copy_retrieval(X, 3.0 * near, rows).all()  # cosine: a copy's length does not matter
    far = X[rows] + 3.0 * rng.normal(size=(50, 16)).astype(np.float32)
    hits = copy_retrieval(X, far, rows, chunk=7)  # chunks answer as one block does
    assert hits.tolist() == copy_retrieval(X, far, rows).tolist() and 0 < hits.sum() < 25
    # another original closer than its own: a miss
    assert copy_retrieval(X, X[[5]], [6]).tolist() == [False]
    with pytest.raises(InputError, match="same columns"):
        copy_retrieval(X, near[:, :8], rows)
    with pytest.raises(InputError, match="one row index per copy"):
        copy_retrieval(X, near, rows[:10])
    with pytest.raises(InputError, match="must index the 200 originals"):
        copy_retrieval(X, near[:1], [200])


def test_paired_test_counts_only_the_cases_where_the_two_differ():
    a = np.array([True] * 40 + [False] * 60)
    b = a.copy()
    assert paired_test(a, b) == 1.0
    b[:20] = False  # a alone succeeds on 20 cases, b alone on none
    assert paired_test(a, b) < 1e-5 and paired_test(a, b) == paired_test(b, a)
    b[40:58] = True  # then b alone on 18: as often as a, by chance
    assert paired_test(a, b) > 0.5
    # concordant cases do not count: the same discordant pairs among many more cases give the same p
    assert paired_test(np.r_[a, np.ones(1000, bool)], np.r_[b, np.ones(1000, bool)]) == paired_test(a, b)
    with pytest.raises(InputError, match="same cases"):
        paired_test(a, b[:10])
