"""Choosing the clustering pipeline without labels.

The right pipeline depends on the images: K-means in the PCA space suits some collections,
UMAP + a Gaussian mixture others, and no single one wins everywhere. visclust therefore
runs a few *candidate pipelines* on the user's own features: each candidate is run
``n_runs`` times, every run with another seed (for UMAP: another embedding) and fitted on
another random subsample of the rows (``subsample`` of them; the rest are assigned to the
nearest cluster). Its **stability** is the mean adjusted Rand index between every pair of
its runs: a partition that reflects real structure in the data comes back whatever the seed
and whichever rows were seen; one imposed by the algorithm on structureless data moves from
run to run (Ben-Hur et al. 2002, Lange et al. 2004). The candidate kept is the most
**central** one (:func:`centrality`): the one whose runs agree most with the runs of every
candidate, its own included, so its stability counts as one voice among the candidates'. A
pipeline can reproduce its own partition almost exactly and still be alone in it (UMAP on a
few hundred images settles on one of two partitions, and repeats it); the partition most
candidates come near is kept instead. No label is used: this is the criterion behind
``method='auto'``.

The answer kept is the consensus of the winning candidate's runs (:func:`consensus_labels`:
K-means on their labels, which costs little next to the runs), so the selection costs
``n_candidates x n_runs`` clusterings and ``n_runs`` embeddings per non-linear space, and
one small K-means more.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from .cluster import METHODS, cluster_features, cluster_means, nearest_center
from .exceptions import InputError

SPACES = ("pca", "umap", "autoencoder")


@dataclass(frozen=True)
class Candidate:
    """One candidate pipeline: the space clusters are found in, and the algorithm.

    ``space`` is ``'pca'`` (the reducer's output), ``'umap'`` (a UMAP embedding of it) or
    ``'autoencoder'`` (UMAP of the code of an autoencoder trained on it, as N2D does);
    ``method`` is one of :data:`visclust.cluster.METHODS`.
    """

    space: str
    method: str

    def __post_init__(self):
        if self.space not in SPACES:
            raise InputError(f"unknown clustering space '{self.space}'; choose one of {', '.join(SPACES)}")
        if self.method not in METHODS:
            raise InputError(f"unknown clustering method '{self.method}'; choose one of {', '.join(METHODS)}")

    @property
    def name(self) -> str:
        return f"{self.space}+{self.method}"

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``'umap+gmm'`` -> ``Candidate('umap', 'gmm')``."""
        space, sep, method = str(text).partition("+")
        if not sep:
            raise InputError(f"a candidate pipeline is written SPACE+METHOD (e.g. 'umap+gmm'), got '{text}'")
        return cls(space, method)


#: The candidates of ``method='auto'``: linear and non-linear spaces, centroid, density and
#: hierarchical algorithms. Cheap ones first: on equal scores the earlier one wins.
DEFAULT_CANDIDATES = (
    Candidate("pca", "kmeans"),
    Candidate("pca", "gmm"),
    Candidate("pca", "agglomerative"),
    Candidate("umap", "kmeans"),
    Candidate("umap", "gmm"),
    Candidate("umap", "agglomerative"),
)


@dataclass
class Selection:
    """What :func:`select_pipeline` found.

    Attributes
    ----------
    best : Candidate
    labels : ndarray (n_samples,)
        The consensus of the winning candidate's runs (:func:`consensus_labels`), or where
        there is none its medoid run (then the same object as that run).
    scores : dict {name: float}
        Stability (mean pairwise ARI between runs) of every candidate.
    runs : dict {name: list of ndarray}
        Every run's labels (all rows), e.g. to report each candidate's accuracy.
    spaces : dict {space: list of ndarray}
        The embeddings used, one per run.
    seconds : dict {name: float}
        Time spent per candidate (its clusterings; embeddings are counted under the space).
    medoid : int
        Index of the winner's medoid run (the run that agrees most with the others).
    centrality : dict {name: float}
        Mean ARI of every candidate's runs with every candidate's runs (:func:`centrality`);
        the winner has the highest.
    """

    best: Candidate
    labels: np.ndarray
    scores: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    spaces: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    medoid: int = 0
    centrality: dict = field(default_factory=dict)


def embed(Z: np.ndarray, space: str, random_state: int, *, umap_components: int = 10,
          n_neighbors: int = 15, learn_params: dict | None = None, metric: str = "cosine") -> np.ndarray:
    """The clustering space ``space`` of the reduced features ``Z`` for one seed (UMAP's
    ``metric``: see :func:`visclust.reduce.umap_embedding`)."""
    from .reduce import umap_embedding

    if space == "pca":
        return Z
    if space == "umap":
        return umap_embedding(Z, umap_components, n_neighbors=n_neighbors, random_state=random_state, metric=metric)
    if space == "autoencoder":
        from .learn import FeatureAutoencoder

        code = FeatureAutoencoder(random_state=random_state, **(learn_params or {})).fit_transform(Z)
        return umap_embedding(code, umap_components, n_neighbors=n_neighbors, random_state=random_state, metric=metric)
    raise InputError(f"unknown clustering space '{space}'; choose one of {', '.join(SPACES)}")


def embed_runs(Z: np.ndarray, space: str, seeds, *, umap_components: int = 10, n_neighbors: int = 15,
               learn_params: dict | None = None, metric: str = "cosine") -> list[np.ndarray]:
    """:func:`embed` for each of ``seeds``; UMAP's embeddings side by side in child processes
    on large inputs (:func:`visclust.reduce.umap_embeddings`)."""
    from .reduce import umap_embeddings

    seeds = list(seeds)
    if space == "pca":
        return [Z] * len(seeds)
    if space == "umap":
        return umap_embeddings(Z, seeds, umap_components, n_neighbors=n_neighbors, metric=metric)
    return [embed(Z, space, s, umap_components=umap_components, n_neighbors=n_neighbors, learn_params=learn_params,
                  metric=metric) for s in seeds]


def subsample_run(E: np.ndarray, n_clusters: int, method: str, random_state: int, subsample: float,
                  n_init: int = 3) -> np.ndarray:
    """Cluster a random ``subsample`` share of ``E``'s rows and assign every row.

    Rows outside the subsample go to the nearest cluster mean (HDBSCAN noise stays -1).
    """
    rng = np.random.default_rng(random_state)
    n = len(E)
    m = int(round(subsample * n))
    if subsample >= 1.0 or m < max(2 * n_clusters, 20):
        return cluster_features(E, n_clusters, method, random_state=random_state, n_init=n_init)
    idx = np.sort(rng.choice(n, m, replace=False))
    sub = cluster_features(E[idx], n_clusters, method, random_state=random_state, n_init=n_init)
    found = int(sub.max()) + 1 if (sub >= 0).any() else 0
    labels = np.full(n, -1, np.int64)
    if found:
        rest = np.setdiff1d(np.arange(n), idx)
        labels[rest] = nearest_center(E[rest], cluster_means(E[idx], sub, found))
    labels[idx] = sub
    return labels


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """``labels`` as integer codes 0..m-1 and m: the labels themselves where they already are
    non-negative integers not far above the number of rows (the runs' cluster numbers), else
    their ranks among the distinct labels (any other labels: negative, large, strings...)."""
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0 and labels.max() < 2 * labels.size + 1024:
        return labels.astype(np.int64, copy=False), int(labels.max()) + 1
    distinct, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1), len(distinct)


def adjusted_rand(a, b) -> float:
    """scikit-learn's ``adjusted_rand_score(a, b)``, to the last bit, counted with
    ``np.bincount`` instead of a sparse contingency matrix: 0.05 ms instead of 1.6 ms for
    10,000 rows in 10 clusters (2026-12-07, Intel 2-core). The selection computes thousands
    (every pair of runs of every candidate, and under ``--clusters auto`` of every number of
    clusters). The pair counts are scikit-learn's ``pair_confusion_matrix``: with ``c`` the
    contingency table, ``sum(c**2) - n`` pairs together in both, ``sum(rows**2) - sum(c**2)``
    and ``sum(columns**2) - sum(c**2)`` together in one only; the same formula on Python
    integers."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise InputError(f"two labellings of different lengths ({a.size} and {b.size}) cannot be compared")
    n = a.size
    (ca, ka), (cb, kb) = _codes(a), _codes(b)
    cell = ca * kb + cb
    if ka * kb <= 4 * n + (1 << 20):
        counts = np.bincount(cell, minlength=ka * kb)
    else:  # many labels on both sides (e.g. every row its own): only the cells that occur
        counts = np.unique(cell, return_counts=True)[1]
    squares = int(np.dot(counts, counts))
    tp = squares - n
    fn = int(np.dot(na := np.bincount(ca), na)) - squares
    fp = int(np.dot(nb := np.bincount(cb), nb)) - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def stability(runs: list[np.ndarray]) -> float:
    """Mean adjusted Rand index over every pair of runs (1 = identical partitions)."""
    pairs = list(itertools.combinations(range(len(runs)), 2))
    if not pairs:
        return float("nan")
    return float(np.mean([adjusted_rand(runs[a], runs[b]) for a, b in pairs]))


def copy_retrieval(originals: np.ndarray, copies: np.ndarray, rows, chunk: int = 1024) -> np.ndarray:
    """Whether each augmented copy finds its own image first among all the originals.

    ``copies[i]`` holds the features of an augmented copy of the image whose features are
    ``originals[rows[i]]``; the copy's nearest original by cosine similarity is looked up
    among every row of ``originals``. Returns one boolean per copy: True where no other
    original is closer than its own. Features that still recognise an image after a crop, a
    mirror image and colour changes (the changes that keep what it shows) describe what it
    shows rather than how it was enlarged or coloured; :class:`visclust.model.ImageClusterer`
    compares input sizes this way (:func:`paired_test`).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.eye(3, dtype=np.float32)
    >>> copy_retrieval(X, X[[2, 0]] + 0.1, [2, 0]).tolist()
    [True, True]
    >>> copy_retrieval(X, X[[1]], [0]).tolist()
    [False]
    """
    from .reduce import l2_normalize

    rows = np.asarray(rows, np.int64)
    A = np.asarray(originals, np.float32)
    C = np.asarray(copies, np.float32)
    if C.ndim != 2 or A.ndim != 2 or C.shape[1] != A.shape[1] or len(C) != len(rows):
        raise InputError(f"copies {C.shape} and originals {A.shape} must have the same columns, and one row "
                         f"index per copy ({len(rows)} given)")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(A)):
        raise InputError(f"rows must index the {len(A)} originals")
    A, C = l2_normalize(A), l2_normalize(C)
    hits = np.empty(len(rows), bool)
    for s in range(0, len(rows), chunk):
        S = C[s:s + chunk] @ A.T
        own = S[np.arange(len(S)), rows[s:s + chunk]]
        hits[s:s + chunk] = ~(S > own[:, None]).any(axis=1)
    return hits


def paired_test(a, b) -> float:
    """McNemar's exact test: the two-sided p-value that two paired sets of successes
    (booleans of the same cases, e.g. :func:`copy_retrieval` of two feature spaces) differ
    only by chance. Only the cases where they disagree count; with none, 1.0.

    Examples
    --------
    >>> paired_test([True] * 30 + [False] * 10, [False] * 30 + [True] * 10) < 0.01
    True
    >>> paired_test([True, False], [True, False])
    1.0
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise InputError(f"paired_test needs outcomes of the same cases, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def neighbour_support(Z: np.ndarray, labels: np.ndarray, n_neighbors: int = 15, random_state: int | None = 0) -> float:
    """How far the neighbourhoods of ``Z`` support a partition of its rows: Cohen's kappa
    between ``labels`` and the vote of each row's ``n_neighbors`` nearest rows in ``Z``, every
    row held out (3 random folds; rows labelled -1 left out). 1 means the neighbours always
    agree, 0 no more than chance for clusters of those sizes.

    :class:`visclust.ImageClusterer` uses it to check that the raw pixels, when they make the
    runs agree more, group images the way the backbone's own features can see: a partition by
    colour or brightness (what raw pixels make reproducible on photos) gets little support
    among the backbone's neighbours, a partition by shape (digits, symbols) keeps it.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(300, centers=3, n_features=5, random_state=0)
    >>> neighbour_support(X, y) > 0.95, abs(neighbour_support(X, np.arange(300) % 3)) < 0.1
    (True, True)
    """
    from sklearn.metrics import cohen_kappa_score

    from .classify import neighbour_votes, vote_size

    Z = np.asarray(Z, np.float32)
    labels = np.asarray(labels)
    keep = np.flatnonzero(labels >= 0)
    Z, labels = Z[keep], labels[keep]
    classes, codes = np.unique(labels, return_inverse=True)
    n = len(codes)
    if n < 6 or len(classes) < 2:
        return float("nan")
    fold = np.random.default_rng(random_state).permutation(n) % 3
    voted = np.empty_like(codes)
    for f in range(3):
        test = fold == f
        nn = vote_size(n_neighbors, int((~test).sum()), len(classes))
        votes = neighbour_votes(Z[test], Z[~test], codes[~test], len(classes), nn)
        voted[test] = votes.argmax(1)  # a tie goes to the nearest neighbour's cluster
    return float(cohen_kappa_score(codes, voted))


def medoid_run(runs: list[np.ndarray]) -> int:
    """Index of the run that agrees most (summed ARI) with the others."""
    if len(runs) < 3:
        return 0
    total = [sum(adjusted_rand(runs[i], runs[j]) for j in range(len(runs)) if j != i) for i in range(len(runs))]
    return int(np.argmax(total))


#: Distinct rows (label combinations across the runs) x clusters above which the winner's
#: medoid run is kept instead of the runs' consensus, whose K-means would cost seconds to
#: minutes (10,000 rows of 3 runs at K = 100: 4,385 distinct rows; at K = 1,000: 7,137).
CONSENSUS_MAX_CELLS = 1_000_000


def consensus_labels(runs: list[np.ndarray], n_clusters: int, random_state: int | None = 0,
                     n_init: int = 10, start: int | None = None) -> np.ndarray | None:
    """The partition of the rows that agrees most with all ``runs`` (a cluster ensemble).

    K-means on the runs' one-hot labels side by side (one column per cluster of each run,
    sparse): its objective is the total disagreement with the runs, so its optimum is their
    consensus (Topchy, Jain & Punch 2005). Started ``n_init`` times by k-means++ and once
    from the run ``start`` (default: the medoid run, :func:`medoid_run`); the start with
    the lowest objective wins, so the answer agrees with the runs at least as well as that
    run does. Where the runs differ, a row goes with the rows it shares clusters with in
    most runs, instead of following one run's accident. Returns None when there is nothing
    to gain or it cannot apply: fewer than 3 runs, runs that agree exactly, noise labels (-1,
    HDBSCAN) or more than ``n_clusters`` clusters (HDBSCAN finds its own number), fewer
    distinct rows than clusters, or more than :data:`CONSENSUS_MAX_CELLS` distinct rows x
    clusters.
    """
    import warnings

    import scipy.sparse as sp
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    runs = [np.asarray(r, np.int64) for r in runs]
    if (len(runs) < 3 or any((r < 0).any() or (r >= n_clusters).any() for r in runs)
            or all(np.array_equal(runs[0], r) for r in runs[1:])):  # identical (or empty): nothing to gain
        return None
    # Rows the runs label alike are the same one-hot row: cluster each distinct row once,
    # weighted by how many rows it stands for (the same objective, far fewer rows).
    tuples, inverse, weight = np.unique(np.stack(runs, 1), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(tuples)
    if m < n_clusters or m * n_clusters > CONSENSUS_MAX_CELLS:
        return None
    offsets = np.cumsum([0] + [int(r.max()) + 1 for r in runs])
    H = sp.csr_matrix((np.ones(tuples.size), (np.repeat(np.arange(m), len(runs)), (tuples + offsets[:-1]).ravel())),
                      shape=(m, int(offsets[-1])))
    first = tuples[:, medoid_run(runs) if start is None else start]
    counts = np.bincount(first, weights=weight, minlength=n_clusters)
    if (counts == 0).any():
        return None
    # that run's cluster means in the one-hot space: K-means from there only lowers the objective
    centres = (sp.csr_matrix((weight.astype(np.float64), (first, np.arange(m))), shape=(n_clusters, m)) @ H).toarray()
    centres /= counts[:, None]
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for init, tries in ((centres, 1), ("k-means++", n_init)):
            km = KMeans(n_clusters, init=init, n_init=tries, random_state=random_state).fit(H, sample_weight=weight)
            if best is None or km.inertia_ < best.inertia_ - 1e-9:
                best = km
    labels = best.labels_.astype(np.int64)[inverse]
    return labels if len(np.unique(labels)) == n_clusters else None


def align_to(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``labels`` renamed so that they best match ``reference`` (Hungarian matching).

    Clusters of ``labels`` left without a partner keep a fresh number; -1 stays -1.
    """
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels, np.int64)
    reference = np.asarray(reference, np.int64)
    a, b = labels.max(initial=-1) + 1, reference.max(initial=-1) + 1
    if a == 0 or b == 0:
        return labels.copy()
    ok = (labels >= 0) & (reference >= 0)
    m = np.zeros((a, b), np.int64)
    np.add.at(m, (labels[ok], reference[ok]), 1)
    rows, cols = linear_sum_assignment(-m)
    mapping = np.arange(b, b + a)
    mapping[rows] = cols
    return np.where(labels >= 0, mapping[np.maximum(labels, 0)], -1)


def agreement(runs: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Share of ``runs`` that put each row in the same cluster as ``reference`` (after
    matching cluster numbers), in [0, 1]: a label-free confidence of each assignment."""
    if not runs:
        return np.ones(len(reference))
    return np.mean([align_to(r, reference) == reference for r in runs], axis=0)


def select_pipeline(Z: np.ndarray, n_clusters: int, candidates=DEFAULT_CANDIDATES, *, n_runs: int = 3,
                    subsample: float = 0.8, random_state: int | None = 0, umap_components: int = 10,
                    n_neighbors: int = 15, learn_params: dict | None = None, spaces: dict | None = None,
                    consensus: bool = True, metric: str = "cosine") -> Selection:
    """Run every candidate pipeline ``n_runs`` times and keep the most central one
    (:func:`centrality`: the partition the candidates' runs agree with most).

    Parameters
    ----------
    Z : ndarray (n_samples, n_components)
        Reduced features (the output of :class:`visclust.reduce.Reducer`).
    n_clusters : int
    candidates : sequence of Candidate or str, default :data:`DEFAULT_CANDIDATES`
    n_runs : int, default 3
        Runs per candidate (>= 2); each has its own seed, embedding and subsample.
    subsample : float, default 0.8
        Share of the rows each run is fitted on.
    random_state : int, default 0
    umap_components : int, default 10
    n_neighbors : int, default 15
        UMAP's neighbours (:func:`visclust.reduce.umap_embedding`).
    learn_params : dict, optional
        Parameters of :class:`visclust.learn.FeatureAutoencoder` for the ``'autoencoder'`` space.
    spaces : dict {space: list of ndarray}, optional
        Embeddings already computed (one per run), e.g. to share them between calls.
    consensus : bool, default True
        The answer is the consensus of the winner's runs (:func:`consensus_labels`) where it
        applies; False (or where it does not): the winner's medoid run.
    metric : {'cosine', 'euclidean'}, default 'cosine'
        UMAP's metric in the ``'umap'`` and ``'autoencoder'`` spaces.

    Returns
    -------
    Selection

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, centers=3, n_features=8, random_state=0)
    >>> select_pipeline(X, 3, ["pca+kmeans", "pca+gmm"]).scores["pca+kmeans"] > 0.9
    True
    """
    cands = [c if isinstance(c, Candidate) else Candidate.parse(c) for c in candidates]
    if not cands:
        raise InputError("no candidate pipeline to choose from; give at least one, e.g. 'pca+kmeans'")
    if int(n_runs) < 2:
        raise InputError(f"n_runs must be at least 2 to measure stability, got {n_runs}")
    if not 0 < subsample <= 1:
        raise InputError(f"subsample must be in (0, 1], got {subsample}")
    Z = np.asarray(Z, np.float32)
    seed0 = 0 if random_state is None else int(random_state)
    seeds = [seed0 + 1000 * r for r in range(int(n_runs))]
    spaces = dict(spaces or {})
    seconds: dict[str, float] = {}
    for space in dict.fromkeys(c.space for c in cands):
        if space not in spaces:
            t0 = time.perf_counter()
            spaces[space] = embed_runs(Z, space, seeds, umap_components=umap_components, n_neighbors=n_neighbors,
                                       learn_params=learn_params, metric=metric)
            seconds[f"embed:{space}"] = time.perf_counter() - t0
    runs, scores = {}, {}
    for c in cands:
        t0 = time.perf_counter()
        runs[c.name] = [subsample_run(E, n_clusters, c.method, s, subsample) for E, s in zip(spaces[c.space], seeds)]
        scores[c.name] = stability(runs[c.name])
        seconds[c.name] = time.perf_counter() - t0
    central = centrality(runs, scores)
    best = cands[[c.name for c in cands].index(most_central(central, scores))]
    labels, i = answer(runs[best.name], n_clusters, seed0, consensus)
    return Selection(best, labels, scores, runs, spaces, seconds, i, central)


def answer(runs: list[np.ndarray], n_clusters: int, random_state: int | None = 0,
           consensus: bool = True) -> tuple[np.ndarray, int]:
    """``(labels, medoid)``: a candidate's answer from its runs, the consensus of them
    (:func:`consensus_labels`) where it applies, else its medoid run (that very object)."""
    i = medoid_run(runs)
    labels = consensus_labels(runs, n_clusters, random_state, start=i) if consensus else None
    return (runs[i] if labels is None else labels), i


def centrality(runs: dict, stabilities: dict) -> dict:
    """How central each candidate's partition is among all the candidates' runs.

    ``runs`` maps a key (a candidate's name, or any hashable, e.g. ``(view, name)`` to
    compare candidates of several views) to its runs' labels, all of the same rows;
    ``stabilities`` maps the same keys to :func:`stability`. A key's centrality is the mean
    over every key (itself included) of the mean ARI between its runs and that key's runs,
    where a key against itself is its stability. The most central partition is the one
    most candidates come near, weighing each candidate as one voice; a pipeline alone in a
    partition it reproduces exactly scores its stability once and its disagreement with
    every other candidate.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    >>> c = centrality({"x": [a, a], "y": [a, a], "z": [b, b]}, {"x": 1.0, "y": 1.0, "z": 1.0})
    >>> c["x"] > c["z"]
    True
    """
    keys = list(runs)
    pair = {}
    for a, b in itertools.combinations(keys, 2):
        pair[a, b] = pair[b, a] = float(np.mean([adjusted_rand(r, q) for r in runs[a] for q in runs[b]]))
    return {a: float(np.mean([float(stabilities[a]) if a == b else pair[a, b] for b in keys])) for a in keys}


def most_central(central: dict, stabilities: dict):
    """The key of :func:`centrality`'s answer with the highest centrality (ties: the more
    stable, then the first)."""
    keys = list(central)
    return max(keys, key=lambda k: (central[k], stabilities[k], -keys.index(k)))


#: Disagreement between runs (1 - mean ARI) at or below which a partition counts as reproduced exactly.
_EXACT = 1e-3


def best_k(scores: dict) -> int:
    """The ``k`` with the highest score (the largest on a tie: exact partitions scored with
    the same reference, the finer first): :func:`choose_n_clusters`' choice."""
    return min((int(k) for k in scores), key=lambda k: (-float(scores[k]), -k))


def other_levels(scores: dict, n: int = 2) -> list[int]:
    """The next best numbers of clusters after the chosen one in ``scores`` (as returned by
    :func:`choose_n_clusters`): the local maxima of the score over ``k`` (at least as high as
    both neighbours), best first, the overall best left out. A collection can be reproducible
    at several levels (Fashion-MNIST with MobileNetV2 features: 4 chosen, its tops / trousers /
    footwear / bags; next best 9, near its 10 articles; docs/quality.md); these are the levels
    to try with an explicit ``--clusters`` when the chosen one is too coarse or too fine.

    Examples
    --------
    >>> other_levels({2: 1.0, 3: 3.0, 4: 1.5, 5: 2.5, 6: 1.0, 7: 1.2})
    [5, 7]
    """
    ks = sorted(int(k) for k in scores)
    if len(ks) < 2:
        return []
    s = {k: float(scores[k]) for k in ks}
    best = best_k(s)
    peaks = [k for i, k in enumerate(ks) if k != best
             and (i == 0 or s[k] >= s[ks[i - 1]]) and (i == len(ks) - 1 or s[k] >= s[ks[i + 1]])]
    return sorted(peaks, key=lambda k: (-s[k], k))[:max(0, int(n))]


def describe_k_choice(scores: dict) -> str:
    """One line on what ``--clusters auto`` chose from ``scores`` (:func:`choose_n_clusters`)
    and the next best levels (:func:`other_levels`)."""
    def score(k):
        return f"score {float(scores[k]):.2f}"

    ks = sorted(int(k) for k in scores)
    if not ks:
        return "--clusters auto: no candidate K was scored"
    best = best_k(scores)
    line = f"--clusters auto chose {best} of {ks[0]}..{ks[-1]} ({score(best)})"
    nxt = other_levels(scores)
    if nxt:
        line += "; next best: " + ", ".join(f"{k} ({score(k)})" for k in nxt) + \
            "; refit with --clusters N for another level"
    return line


def choose_n_clusters(embeddings, k_range=(2, 30), method: str = "kmeans", *, n_runs: int = 12,
                      subsample: float = 0.8, sample_size: int = 5000,
                      random_state: int | None = 0) -> tuple[int, dict[int, float]]:
    """Choose the number of clusters by stability against a structureless reference.

    For each ``k`` in ``k_range``, ``method`` is run ``n_runs`` times, each on a random
    ``subsample`` share of (at most ``sample_size``) rows and with its own seed; run ``r``
    uses ``embeddings[r % len(embeddings)]`` (e.g. UMAP embeddings with different seeds, so
    the embedding's own randomness counts too). The disagreement of the runs,
    ``1 - stability``, is compared with the disagreement of the same runs on a **reference
    without cluster structure**: one Gaussian sample with the mean and covariance of the first
    embedding. ``k``'s score is the reference's disagreement divided by the data's, and the
    best ``k`` wins: the number of groups at which the data are the most reproducible
    *relative to* what the algorithm reproduces on a single blob of the same shape (the null
    reference of the gap statistic and Clest, Tibshirani et al. 2001, Dudoit & Fridlyand 2002).

    Why not the plain stability or the silhouette: K-means splits an elongated cloud in two
    the same way every time, so both favour ``k = 2`` on collections where a coarse split (for
    CIFAR-10, animals against vehicles) dominates; on the reference, that split is just as
    reproducible, and the ratio discounts it. A disagreement of at most 0.001 (a partition
    reproduced exactly) counts as 0.001, against the largest reference disagreement at any
    ``k`` up to it: with well-separated groups, merging whole groups is as reproducible as the
    true number, and the finest exact partition ranks first among the exact ones (ties go to
    the larger ``k``); but an exact ``k = 2``, which the reference nearly reproduces too
    (disagreement 0.009-0.086), no longer outranks a finer level that is almost exact (until
    2026-12-07 any exact ``k`` won, the finest first: Fashion-MNIST chose 2 or 3 where 5
    scored 25; docs/benchmarks.md, "Partitions reproduced exactly").

    Rows identical in the first embedding (copies of an image) count once, unless the distinct
    rows are too few to subsample: a copy of every image in every subsample made a coarse split
    look exactly reproducible (four blobs of 40 points x 10 copies: K = 2 instead of 4).

    Returns
    -------
    k : int
    scores : dict {k: reference disagreement / data disagreement; where the data's is at most
        0.001, the largest reference disagreement up to k / 0.001}

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(600, centers=5, n_features=6, cluster_std=0.6, center_box=(-12, 12), random_state=3)
    >>> choose_n_clusters([X], (2, 8))[0]
    5
    """
    embeddings = [np.asarray(E) for E in embeddings]  # float32 after subsampling: no full-size copies
    if not embeddings:
        raise InputError("choose_n_clusters needs at least one embedding of the rows")
    n = len(embeddings[0])
    if any(len(E) != n for E in embeddings):
        raise InputError("every embedding must have the same rows")
    lo, hi = int(k_range[0]), int(k_range[1])
    if lo < 2 or hi < lo:
        raise InputError(f"k range must satisfy 2 <= min <= max, got {k_range}")
    if n > 1:
        first = np.unique(embeddings[0], axis=0, return_index=True)[1]
        if len(first) < n and int(subsample * min(len(first), sample_size)) // 2 >= lo:
            embeddings = [E[np.sort(first)] for E in embeddings]  # copies count once
            n = len(first)
    if int(n_runs) < 2:
        raise InputError(f"n_runs must be at least 2 to measure stability, got {n_runs}")
    seed0 = 0 if random_state is None else int(random_state)
    rng = np.random.default_rng(seed0)
    idx = np.sort(rng.choice(n, sample_size, replace=False)) if n > sample_size else np.arange(n)
    Es = [np.asarray(E[idx], np.float32) for E in embeddings]
    hi = min(hi, int(subsample * len(idx)) // 2)
    if hi < lo:
        need = int(np.ceil(2 * lo / subsample))
        while int(subsample * need) // 2 < lo:  # float rounding
            need += 1
        at_least = f" (at least {need} are needed)" if need <= sample_size else ""
        raise InputError(f"{n} sample{'s are' if n != 1 else ' is'} too few to choose among {k_range[0]}..{k_range[1]} "
                         f"clusters{at_least}; give the number of clusters instead (--clusters N)")
    E0 = Es[0].astype(np.float64)
    # atleast_2d: np.cov of one column is a scalar (a few images reduced to one dimension)
    null = rng.multivariate_normal(E0.mean(0), np.atleast_2d(np.cov(E0, rowvar=False)), size=len(idx)).astype(np.float32)
    method = "kmeans" if method == "hdbscan" else method
    seeds = [seed0 + r for r in range(int(n_runs))]
    scores, ref_max = {}, 0.0
    for k in range(lo, hi + 1):
        runs = [subsample_run(Es[r % len(Es)], k, method, s, subsample) for r, s in enumerate(seeds)]
        if method == "kmeans" and k > lo and min(len(np.unique(r[r >= 0])) for r in runs) < k:
            # The rows hold fewer than k distinct points (duplicate images): K-means returns
            # fewer clusters, identically in every run, which would count as exact; larger k too.
            break
        data = stability(runs)
        ref = stability([subsample_run(null, k, method, s, subsample) for s in seeds])
        # Well-separated groups are reproduced exactly at their number and also when whole
        # groups are merged. A disagreement below the measurement's resolution counts as that
        # resolution, so an exact k beats a non-exact one only where the reference is far from
        # exact too. Its reference is the largest at any k up to it (a Gaussian's disagreement
        # does not fall with k but a single sample's can), so of exact ks the finest ranks first.
        ref_max = max(ref_max, 1.0 - ref)
        exact = 1.0 - data <= _EXACT
        scores[k] = float(ref_max / _EXACT) if exact else float((1.0 - ref) / (1.0 - data))
    return best_k(scores), scores
