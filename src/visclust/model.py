"""The estimators users fit: :class:`FeatureClusterer` on a feature matrix and
:class:`ImageClusterer` on image files (backbone + FeatureClusterer).

Both follow scikit-learn's contract: ``__init__`` stores its arguments, ``fit`` returns
``self``, learned state ends in ``_``, ``predict`` checks that the model is fitted.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted as _sk_check_is_fitted
from sklearn.exceptions import NotFittedError as _SkNotFittedError

from ._stages import stage
from .classify import PseudoLabelClassifier, centroid_margin
from .cluster import _compact, check_method, cluster_features, cluster_means, nearest_distance
from .exceptions import InputError, NotFittedError, WeightsUnavailableError
from .io import Assignments, collect_inputs
from .reduce import Reducer, distinct_rows, heldout_residuals
from .select import SPACES, Candidate, agreement, choose_n_clusters, embed, embed_runs, select_pipeline

#: Algorithms ``method='auto'`` chooses among (HDBSCAN and spectral are available by name:
#: HDBSCAN decides the number of groups itself, spectral is slow beyond a few thousand rows).
AUTO_METHODS = ("kmeans", "gmm", "agglomerative")
#: With ``space='auto'``, UMAP spaces are candidates only from this many rows on.
UMAP_MIN_SAMPLES = 300
#: With ``method='auto'``, the Gaussian mixture is left out of the candidates when one of its
#: runs would fit at least this many rows x components (the selection fits 80% of the rows):
#: scikit-learn's EM then costs more than all the other candidates together. Measured on 2
#: CPU cores, 100,000 x 256 blobs, K = 1,000 (80,000 x 1,000 = 8e7): the two GMM candidates
#: took 336 s of a 712 s default fit, K-means 5-10 s and Ward 17-26 s (docs/quality.md). A
#: user's ``method='gmm'`` or ``candidates`` list is never changed.
GMM_MAX_CELLS = 20_000_000
#: ``augment``: the copies of this many images are written, extracted and deleted before the
#: next ones, so the temporary folder never holds more. Copies are PNGs of at most twice the
#: backbone's resize size: median 289 KB, largest 852 KB for the shared 512 px photos (about
#: 3 GB for 10,000), 2 KB for CIFAR-10's 32 x 32 images (``benchmarks/copies.py``).
COPY_CHUNK_IMAGES = 10_000

#: ``fit`` computes the chosen features of a larger collection this many images at a time,
#: into one array, when they come from several backbones side by side (the pixels beside the
#: network) or add to a sample already computed: no step holds the whole collection's
#: features twice (one part per backbone, then their concatenation; or the rest, then the
#: merge with the sample). One backbone alone is extracted in one go (its own output array).
FIT_CHUNK_IMAGES = 100_000
#: ``max_cluster_rows``: the choice of pipeline (the whitening test, PCA, UMAP, the candidates
#: and their stability) and of the view (``ImageClusterer``'s input-size and pixels tests) runs
#: on a random sample of at most this many rows, or ``SAMPLE_ROWS_PER_CLUSTER * k`` when that
#: is more. The stability criterion was set and checked on collections of 1,797-10,000 images,
#: and its scores are not comparable across sizes: K-means in the PCA space grows more
#: reproducible with more rows (it cuts an elongated cloud the same way every time) while the
#: UMAP candidates do not. On CIFAR-10 train (docs/benchmarks.md, "Large collections"), chosen
#: on every one of its 50,000 rows it won one seed of two at ACC 0.444; chosen on 20,000 rows
#: of its features at the backbone's 224 px it won two seeds of three (stability 0.92-0.93,
#: ACC 0.43-0.44 against UMAP's 0.47), and on 10,000 none of three. Also time: one UMAP
#: embedding of 200,000 rows takes minutes on 2 CPU cores, and the selection computes 3.
MAX_CLUSTER_ROWS = 10_000
#: After choosing on that sample, the chosen pipeline clusters once more a random sample of
#: up to this many rows (every row of a smaller collection); the classifier assigns the rest.
#: UMAP's candidates are more accurate on more rows: on CIFAR-10 train, chosen on 20,000
#: rows, the winner clustering all 50,000 gave ACC 0.528 / 0.533 (two seeds) against 0.511 /
#: 0.522 with the 20,000 clustered alone (docs/benchmarks.md, "Large collections").
FINAL_CLUSTER_ROWS = 100_000
#: ``reject_novel``: the model keeps up to this many training rows (in the reduced space) and
#: two distances that NOVELTY_QUANTILE of training rows stay within: to their nearest other
#: kept row, and from the principal subspace (measured out of sample: PCA fitted on 4/5 of
#: the rows, the residuals of the other fifth, 5 folds). A new row beyond either fits no
#: cluster. 5,000 x 64 float32 = 1.3 MB in the model file (with --pca 0: 5,000 x the feature size).
NOVELTY_ROWS = 5_000
NOVELTY_QUANTILE = 0.995
#: ... at least this many rows per cluster in that sample.
SAMPLE_ROWS_PER_CLUSTER = 100


class _NotFittedError(NotFittedError, _SkNotFittedError):
    """visclust's NotFittedError that scikit-learn's tools also recognise."""


def _check_fitted(est, attr: str) -> None:
    try:
        _sk_check_is_fitted(est, attr)
    except _SkNotFittedError as e:
        raise _NotFittedError(
            f"this {type(est).__name__} is not fitted yet; call fit() first or load a saved model with visclust.load()"
        ) from e


class FeatureClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Cluster a feature matrix and learn a classifier that assigns new rows.

    Pipeline: L2 -> PCA (whitened) -> L2 -> clustering space (the PCA space itself, a UMAP
    embedding of it, or UMAP of an autoencoder's code) -> clustering -> linear SVM on the
    most confident members of each cluster, refined by self-training, with temperature-scaled
    confidences.

    With the defaults (``method='auto'``, ``space='auto'``) the space and the algorithm are
    chosen on the data, without labels, by :func:`visclust.select.select_pipeline`: every
    candidate is run ``n_runs`` times on different subsamples and seeds, and the most central
    one wins: the one whose runs agree most (mean adjusted Rand index) with the runs of every
    candidate, its own included (:func:`visclust.select.centrality`).

    Parameters
    ----------
    n_clusters : int or 'auto', default 8
        Number of groups; ``'auto'`` chooses it in ``k_range`` by the stability of the
        clustering against a structureless reference, in the clustering space (the UMAP
        embeddings when UMAP is among the candidates): see
        :func:`visclust.select.choose_n_clusters`.
    method : {'auto', 'kmeans', 'gmm', 'agglomerative', 'hdbscan', 'spectral'}, default 'auto'
        Clustering algorithm, or ``'auto'`` to choose among K-means, Gaussian mixture and Ward.
    space : {'auto', 'pca', 'umap', 'autoencoder'}, default 'auto'
        Where clusters are found; ``'auto'`` chooses among 'pca' and 'umap' (plus
        'autoencoder' when ``learned_step=True``); below 300 distinct rows only 'pca' is tried.
    n_components : int or None, default 64
        PCA dimensions (None: no PCA).
    whiten : bool or 'auto', default 'auto'
        Divide each principal component by its standard deviation. ``'auto'`` decides
        without labels: K-means is run 3 times on random 80% subsamples of both the whitened
        and the plain PCA space, and the space whose clusterings agree more (mean ARI
        between runs) is kept (scores in ``whiten_scores_``). Whitening helps when a few
        high-variance directions hide the groups; it hurts when sampling noise is whitened
        up to the size of the real signal (few images per dimension).
    normalize : bool, default True
        L2-normalise the rows before PCA and after it, and embed with UMAP's cosine metric:
        the geometry of a deep network's features, whose direction is what they say (and
        what the choices of this pipeline were measured on). ``False`` keeps the rows'
        lengths (euclidean UMAP): for coordinates where the length counts, such as 2-d or
        3-d points or measurements. On 2-d ``make_blobs`` (600 points, 4 centres, 3 seeds) the
        normalised pipeline projects the points on a circle and merges blobs that lie in one
        direction (ARI 0.52-0.63); ``False`` gives 0.82-0.95, near scikit-learn's K-means
        (0.83-0.96; ``benchmarks/normalize.py``, docs/benchmarks.md, "Rows whose length
        counts").
    umap_components : int or None, default 10
        Dimensions of the UMAP embeddings; ``None`` disables every UMAP-based space.
    umap_neighbors : int, default 15
        UMAP's ``n_neighbors``: how many nearest rows shape each row's place in the embedding
        (at most the number of rows - 1).
    learned_step : bool, default False
        Also try the learned step (an N2D autoencoder on the features, see
        :mod:`visclust.learn`) as a candidate space; it is kept only if the criterion prefers it.
    candidates : sequence of str, optional
        Explicit candidate pipelines ``'SPACE+METHOD'`` (e.g. ``['pca+kmeans', 'umap+gmm']``);
        overrides ``method``/``space``.
    n_runs : int, default 3
        Runs per candidate for the stability criterion.
    confident_fraction : float, default 0.5
        Share of each cluster used to train the classifier.
    self_training : int, default 2
        Self-training rounds of the classifier.
    classifier : {'auto', 'svm', 'knn', 'mlp'}, default 'auto'
        What assigns rows to clusters (training rows and new images): the linear SVM, a vote
        of the nearest training rows, a small network, or (``'auto'``) whichever of the SVM
        and the vote reproduces the clustering better on held-out rows, and the network when
        augmented copies are given (:meth:`refit_classifier`); see
        :class:`~visclust.classify.PseudoLabelClassifier`.
    reject_threshold : float, default 0.0
        Rows whose confidence is below this get cluster -1 ("fits no cluster").
    reject_novel : bool, default False
        :meth:`predict` gives cluster -1 to rows unlike the training rows (:meth:`novelty` >
        1): farther from the nearest of (up to :data:`NOVELTY_ROWS`) training rows, or from
        their principal subspace, than 99.5% of training rows are. The confidence says which
        cluster a row resembles most, not whether it resembles any: a photo given to a model
        of digits, emoji and small photos got 0.92-1.00. Not applied to the training rows'
        ``labels_``.
    k_range : tuple of int, default (2, 30)
        Candidates for ``n_clusters='auto'``.
    n_init : int, default 10
        K-means restarts when a single pipeline is fitted (no selection).
    max_cluster_rows : int or None, default 10000
        On more rows than this, the pipeline is chosen (PCA, every candidate and its stability)
        on a random sample of ``max(max_cluster_rows, 100 * n_clusters)`` rows, so the
        stability criterion compares candidates at the sizes it was checked on
        (:data:`MAX_CLUSTER_ROWS`); the chosen pipeline then clusters once more up to
        :data:`FINAL_CLUSTER_ROWS` rows, and the trained classifier assigns any others, as
        :meth:`predict` would. The time of everything but that assignment stops growing with
        the collection. ``None`` chooses and clusters on every row.
    random_state : int or None, default 0
    verbose : bool, default False
        Print each long stage of the fit and its time on stderr (:mod:`visclust._stages`);
        :class:`ImageClusterer` turns it on where it shows progress. Not saved in the model file.

    Attributes
    ----------
    labels_ : ndarray (n_samples,)
        Final assignment of each training row (the classifier's prediction).
    cluster_labels_ : ndarray (n_samples,)
        The clustering the classifier was trained from (-1 = noise for HDBSCAN); rows outside
        the clustered sample (``sample_index_``) have the classifier's assignment.
    selection_index_ : ndarray of int or None
        The rows the pipeline was chosen on (PCA, the candidates, their stability) when there
        were more than ``max_cluster_rows``, else None.
    sample_index_ : ndarray of int or None
        The rows the chosen pipeline then clustered when there were more than
        :data:`FINAL_CLUSTER_ROWS` (the classifier assigned the others), else None. Neither
        index is saved in the model file.
    sample_rows_ : tuple (chosen on, clustered, rows) or None
        Those three counts when the pipeline was chosen on a sample (saved in the model file;
        :func:`describe_sample` says it in words).
    confidence_ : ndarray (n_samples,)
    n_clusters_ : int
    cluster_centers_ : ndarray (n_clusters_, n_components_)
        Mean of each cluster in the reduced space.
    reducer_ : Reducer
    classifier_ : PseudoLabelClassifier
    novelty_reference_ : ndarray (at most NOVELTY_ROWS, n_components_)
        Training rows in the reduced space, for :meth:`novelty`.
    novelty_thresholds_ : tuple (nearest, residual)
        The distances 99.5% of training rows stay within (:meth:`novelty`).
    pipeline_ : str
        The pipeline used, ``'SPACE+METHOD'``.
    pipeline_scores_ : dict {str: float}
        Stability of each candidate pipeline (empty when only one was given).
    pipeline_centrality_ : dict {str: float}
        Centrality of each candidate (:func:`visclust.select.centrality`: the mean agreement
        of its runs with every candidate's runs); the pipeline chosen has the highest. Among
        the candidates of every view compared when :class:`ImageClusterer` compared views.
    selection_ : visclust.select.Selection
        The selection's details (every run of every candidate); only after a fit that chose
        among several candidates, and not saved in the model file.
    k_scores_ : dict
        Score of each candidate k when ``n_clusters='auto'`` (the reference's disagreement
        between runs divided by the data's; the largest wins).

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, centers=3, n_features=16, random_state=0)
    >>> FeatureClusterer(n_clusters=3, n_components=8, umap_components=None).fit(X).n_clusters_
    3
    """

    def __init__(self, n_clusters=8, method: str = "auto", space: str = "auto", n_components: int | None = 64,
                 whiten="auto", normalize: bool = True, umap_components: int | None = 10, umap_neighbors: int = 15,
                 learned_step: bool = False,
                 candidates=None, n_runs: int = 3, confident_fraction: float = 0.5, self_training: int = 2,
                 classifier: str = "auto", reject_threshold: float = 0.0, reject_novel: bool = False,
                 k_range=(2, 30), n_init: int = 10,
                 max_cluster_rows: int | None = MAX_CLUSTER_ROWS, random_state: int | None = 0,
                 verbose: bool = False):
        self.n_clusters = n_clusters
        self.method = method
        self.space = space
        self.n_components = n_components
        self.whiten = whiten
        self.normalize = normalize
        self.umap_components = umap_components
        self.umap_neighbors = umap_neighbors
        self.learned_step = learned_step
        self.candidates = candidates
        self.n_runs = n_runs
        self.confident_fraction = confident_fraction
        self.self_training = self_training
        self.classifier = classifier
        self.reject_threshold = reject_threshold
        self.reject_novel = reject_novel
        self.k_range = k_range
        self.n_init = n_init
        self.max_cluster_rows = max_cluster_rows
        self.random_state = random_state
        self.verbose = verbose

    #: What stage lines call the rows and which view they belong to (ImageClusterer sets both).
    _stage_unit, _stage_view = "rows", ""

    def _stage(self, text: str):
        return stage(bool(self.verbose), f"{self._stage_view}{text}")

    def _count(self, n: int) -> str:
        return f"{n:,} {self._stage_unit}"

    def _validate_params(self) -> int | None:
        check_method(self.method, allow_auto=True)
        k = self.n_clusters
        if isinstance(k, str):
            if k == "auto":
                k = None
            elif k.isdigit():
                k = int(k)
            else:
                raise InputError(f"n_clusters must be a positive integer or 'auto', got {k!r}")
        if k is not None and (not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1):
            raise InputError(f"n_clusters must be a positive integer or 'auto', got {self.n_clusters!r}")
        if not 0.0 <= float(self.reject_threshold) < 1.0:
            raise InputError(f"reject_threshold must be in [0, 1), got {self.reject_threshold}")
        if self.reject_novel not in (True, False):
            raise InputError(f"reject_novel must be True or False, got {self.reject_novel!r}")
        if self.umap_components is not None and int(self.umap_components) < 1:
            raise InputError(f"umap_components must be a positive integer or None, got {self.umap_components}")
        u = self.umap_neighbors
        if not isinstance(u, (int, np.integer)) or isinstance(u, bool) or u < 2:
            raise InputError(f"umap_neighbors must be an integer >= 2, got {u!r}")
        if self.space not in ("auto",) + SPACES:
            raise InputError(f"unknown clustering space '{self.space}'; choose one of auto, {', '.join(SPACES)}")
        if self.space in ("umap", "autoencoder") and self.umap_components is None:
            raise InputError(f"space='{self.space}' needs UMAP: set umap_components (e.g. 10) or use space='pca'")
        if self.whiten not in (True, False, "auto"):
            raise InputError(f"whiten must be True, False or 'auto', got {self.whiten!r}")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise InputError(f"normalize must be True or False, got {self.normalize!r}")
        if not isinstance(self.n_runs, (int, np.integer)) or isinstance(self.n_runs, bool) or self.n_runs < 2:
            raise InputError(f"n_runs must be an integer >= 2, got {self.n_runs!r}")
        m = self.max_cluster_rows
        if m is not None and (not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1):
            raise InputError(f"max_cluster_rows must be a positive integer or None (every row), got {m!r}")
        self._candidate_list()
        return k

    def _metric(self) -> str:
        """UMAP's metric: cosine on L2-normalised rows, euclidean where their length counts."""
        return "cosine" if self.normalize else "euclidean"

    def _umap_kw(self) -> dict:
        """UMAP's settings for :func:`visclust.select.embed`, ``embed_runs`` and ``select_pipeline``."""
        dims = int(self.umap_components) if self.umap_components is not None else 10
        return {"umap_components": dims, "n_neighbors": int(self.umap_neighbors), "metric": self._metric()}

    def _choose_whitening(self, X, k):
        """Whitened or plain PCA, whichever K-means partitions more reproducibly."""
        from .select import stability, subsample_run

        if k is None:  # the number of groups is not known yet: judge with a typical one
            k = int(np.clip(10, self.k_range[0], self.k_range[1]))
        seed = 0 if self.random_state is None else int(self.random_state)
        best, scores = None, {}
        if len(X) <= k:  # too few rows to judge: plain PCA (whitening amplifies the noise of few rows)
            return Reducer(self.n_components, False, self.normalize).fit(X), {}
        for whiten in (True, False):
            reducer = Reducer(self.n_components, whiten, self.normalize).fit(X)
            Z = reducer.transform(X)
            runs = [subsample_run(Z, k, "kmeans", seed + r, 0.8) for r in range(self.n_runs)]
            scores[whiten] = stability(runs)
            # A tie goes to the space that keeps more dimensions (8 photos: both 1.000 on 2
            # groups, the whitened space 2-d, the plain one 7-d), else to the whitened one.
            if best is None or (scores[whiten], reducer.n_components_) > (scores[best[0]], best[1].n_components_):
                best = (whiten, reducer)
        return best[1], scores

    def _candidate_list(self, n_samples: int | None = None, n_clusters: int | None = None,
                        n_distinct: int | None = None) -> list[Candidate]:
        """The candidate pipelines implied by ``candidates``, ``method``, ``space``... (and by
        the problem's size: :data:`GMM_MAX_CELLS`; :data:`UMAP_MIN_SAMPLES` distinct rows,
        ``n_distinct``, default ``n_samples``)."""
        if self.candidates is not None:
            if isinstance(self.candidates, str):
                raise InputError("candidates must be a list of 'SPACE+METHOD' strings, e.g. ['pca+kmeans', 'umap+gmm']")
            cands = [Candidate.parse(c) for c in self.candidates]
            if not cands:
                raise InputError("candidates is empty; give at least one 'SPACE+METHOD' or leave it None")
            return cands
        if self.space != "auto":
            spaces = [self.space]
        else:
            # UMAP's neighbour graph says little about a few hundred points, and its first call
            # in a process costs a JIT compilation: small collections use the PCA space only.
            n_distinct = n_samples if n_distinct is None else n_distinct
            few = n_distinct is not None and n_distinct < UMAP_MIN_SAMPLES  # copies of an image count once
            spaces = ["pca"] if self.umap_components is None or few else ["pca", "umap"]
            if self.learned_step and len(spaces) > 1:
                spaces.append("autoencoder")
        methods = list(AUTO_METHODS) if self.method == "auto" else [self.method]
        if self.method == "auto" and n_samples and n_clusters and 0.8 * n_samples * n_clusters >= GMM_MAX_CELLS:
            methods.remove("gmm")
        return [Candidate(s, m) for s in spaces for m in methods]

    def fit(self, X, y=None, classifier_features=None):
        """Fit on ``X`` of shape (n_samples, n_features). ``y`` is ignored.

        ``classifier_features``, optional, shape (n_samples, n_other): other features of the
        same rows, in the same order, for the classifier step alone. ``X`` is clustered as
        always; the reducer and the classifier are then trained again on these rows with the
        clustering's pseudo-labels (:meth:`train_classifier_on`), so :meth:`predict` and
        :meth:`transform` take rows like them. For example the backbone's features at two
        input sizes and the raw pixels side by side, where ``X`` is one of them:
        docs/benchmarks.md, "The classifier step on other features of the same images".
        """
        if classifier_features is not None:
            F = _as_features(classifier_features)
            if len(F) != len(_as_features(X)):
                raise InputError(f"classifier_features has {len(F)} rows but X has {len(_as_features(X))}; "
                                 "give the same rows in the same order")
        k, X = self._checked_input(X)
        index = self._cluster_sample(len(X), k)
        state = self._select(X if index is None else X[index], k, sampled=index is not None)
        self._finish(X, index, state, classify=classifier_features is None)
        return self if classifier_features is None else self.train_classifier_on(F)

    def train_classifier_on(self, F):
        """Train the reducer, the classifier and the novelty test again on ``F``: other
        features of the rows of the last :meth:`fit` (same order), the clustering unchanged.
        Afterwards :meth:`predict` and :meth:`transform` take rows like ``F``; ``labels_``,
        ``confidence_`` and ``cluster_centers_`` are the new classifier's."""
        _check_fitted(self, "cluster_labels_")
        F = _as_features(F)
        if len(F) != len(self.cluster_labels_):
            raise InputError(f"train_classifier_on needs the {len(self.cluster_labels_)} rows of the last fit, "
                             f"in the same order; got {len(F)}")
        seed = 0 if self.random_state is None else int(self.random_state)
        self.reducer_ = clone(self.reducer_).fit(F)  # the same dimensions and whitening as chosen for X
        self.n_features_in_ = F.shape[1]
        Z = self.reducer_.transform(F)
        with self._stage(f"training the classifier on {self._count(len(Z))} (other features)"):
            self._fit_classifier(Z)
            self._fit_novelty(F, Z, seed)
        return self

    def _checked_input(self, X):
        k = self._validate_params()
        X = _as_features(X)
        if k is not None and len(X) < k:
            raise InputError(f"{self._count(len(X))} cannot form {k} clusters; use fewer clusters or more {self._stage_unit}")
        self.n_features_in_ = X.shape[1]
        return k, X

    def _select_on(self, X, sampled: bool) -> dict:
        """Steps 1-4 of :meth:`fit` alone: the reducer, the chosen pipeline and its stability
        (``pipeline_scores_``) on ``X``, either the whole collection or (``sampled``) the
        sample of a larger one, exactly as ``fit`` chooses on its sample. Returns what
        :meth:`_finish` needs to cluster and classify the collection with that choice, so
        :class:`ImageClusterer` compares views without fitting the losing ones whole."""
        k, X = self._checked_input(X)
        return self._select(X, k, sampled)

    def _select(self, X, k, sampled: bool) -> dict:
        """Reduce ``X``, choose K and the pipeline on it; cluster it too unless ``sampled``
        (then :meth:`_finish` clusters the collection the sample came from)."""
        self.whiten_scores_, self.pipeline_centrality_ = {}, {}
        if self.whiten == "auto":
            self.reducer_, self.whiten_scores_ = self._choose_whitening(X, k)
        else:
            self.reducer_ = Reducer(self.n_components, bool(self.whiten), self.normalize).fit(X)
        Z = self.reducer_.transform(X)
        distinct = len(Z)
        if len(Z) > 1 and k != 1:
            # Identical images are never split: no more groups than distinct rows. K-means cannot
            # split them; Ward or spectral clustering would cut a set of copies in two. Every row
            # the same: one group, whatever K (under K = auto too).
            distinct = distinct_rows(Z)
            k = 1 if distinct == 1 else (None if k is None else min(k, distinct))
        if k == 1:  # one group: nothing to choose, and a mixture cannot even be fitted to one image
            self.pipeline_, self.pipeline_scores_, self.k_scores_ = "pca+kmeans", {}, {}
            self.cluster_labels_ = np.zeros(len(X), np.int64)
            return {"k": 1, "rows": len(X), "Z": Z, "space": Z, "runs": []}
        cands = self._candidate_list(len(X), n_distinct=distinct)
        seed = 0 if self.random_state is None else int(self.random_state)
        spaces = {}
        self.k_scores_ = {}
        if k is None:
            # The number of groups is scored in the first non-linear space when there is one
            # (UMAP packs groups tightly), on all n_runs embeddings the selection uses anyway,
            # by stability against a structureless reference (select.choose_n_clusters).
            ks = next((c.space for c in cands if c.space != "pca"), "pca")
            k_method = next((c.method for c in cands if c.space == ks and c.method in ("kmeans", "gmm", "agglomerative")),
                            "kmeans")
            with self._stage(f"choosing the number of clusters in {self.k_range[0]}..{self.k_range[1]} "
                             f"on {self._count(len(X))}"):
                spaces[ks] = embed_runs(Z, ks, [seed + 1000 * r for r in range(self.n_runs)], **self._umap_kw())
                k, self.k_scores_ = choose_n_clusters(spaces[ks], self.k_range, k_method, random_state=seed)
        cands = self._candidate_list(len(X), k, n_distinct=distinct)
        state = {"k": k, "rows": len(X), "Z": Z, "space": None, "runs": []}
        if len(cands) == 1 and sampled:
            self.pipeline_, self.pipeline_scores_ = cands[0].name, {}  # clustered by _finish, on more rows
        elif len(cands) == 1:
            c = cands[0]
            with self._stage(f"clustering {self._count(len(X))} with {c.name}"):
                E = spaces[c.space][0] if c.space in spaces else embed(Z, c.space, seed, **self._umap_kw())
                self.cluster_labels_ = cluster_features(E, k, c.method, random_state=self.random_state,
                                                        n_init=self.n_init)
            self.pipeline_, self.pipeline_scores_ = c.name, {}
            state["space"] = E
        else:
            with self._stage(f"choosing the pipeline: {len(cands)} candidates x {self.n_runs} runs on "
                             f"{self._count(len(X))}"):
                sel = select_pipeline(Z, k, cands, n_runs=self.n_runs, random_state=seed, spaces=spaces,
                                      **self._umap_kw())
            self.cluster_labels_ = sel.labels
            self.pipeline_, self.pipeline_scores_ = sel.best.name, dict(sel.scores)
            self.pipeline_centrality_ = dict(sel.centrality)
            self.selection_ = sel  # every candidate's runs, e.g. to report them; not saved
            state["space"] = sel.spaces[sel.best.space][sel.medoid]
            state["runs"] = [r for r in sel.runs[sel.best.name] if r is not sel.labels]  # all, for a consensus
        return state

    def _use_candidate(self, state: dict, name: str) -> None:
        """Make the selection's candidate ``name`` the chosen pipeline (its answer, space and
        runs in ``state``), e.g. when :class:`ImageClusterer` finds it the most central
        partition among the candidates of several views."""
        import dataclasses

        from .select import answer

        sel = self.selection_
        if name == sel.best.name:
            return
        c = Candidate.parse(name)
        seed = 0 if self.random_state is None else int(self.random_state)
        labels, i = answer(sel.runs[name], state["k"], seed)
        self.selection_ = dataclasses.replace(sel, best=c, labels=labels, medoid=i)
        self.cluster_labels_, self.pipeline_ = labels, name
        state["space"] = sel.spaces[c.space][i]
        state["runs"] = [r for r in sel.runs[name] if r is not labels]

    def _finish(self, X_all, index, state: dict, classify: bool = True):
        """The rest of :meth:`fit` after :meth:`_select`: on a sample (``index``: the rows of
        ``X_all`` the selection saw, or None for all of them), the chosen pipeline clusters up
        to ``FINAL_CLUSTER_ROWS`` rows; then the classifier, and the assignment of every row.
        ``classify=False``: no classifier where every row was clustered, for the caller to
        train one on other features (:meth:`train_classifier_on`)."""
        k, Z, space, runs = state["k"], state["Z"], state["space"], state["runs"]
        seed = 0 if self.random_state is None else int(self.random_state)
        self.selection_index_ = self.sample_index_ = index
        if index is not None:  # the chosen pipeline once more, on up to FINAL_CLUSTER_ROWS rows
            best = Candidate.parse(self.pipeline_)
            self.sample_index_ = self._random_rows(len(X_all), max(FINAL_CLUSTER_ROWS, state["rows"]), seed + 1)
            Z = self.reducer_.transform(X_all if self.sample_index_ is None else X_all[self.sample_index_])
            with self._stage(f"clustering {self._count(len(Z))} with {self.pipeline_}"):
                space = embed(Z, best.space, seed, **self._umap_kw())
                self.cluster_labels_ = cluster_features(space, k, best.method, random_state=self.random_state,
                                                        n_init=self.n_init)
            runs = []
        self.cluster_labels_ = _compact(self.cluster_labels_)
        found = int(self.cluster_labels_.max()) + 1 if (self.cluster_labels_ >= 0).any() else 0
        if found < 1:
            warnings.warn("the clustering found no cluster (all points are noise); every row is one group", stacklevel=2)
            self.cluster_labels_ = np.zeros(len(Z), np.int64)
            found = 1
        margin = centroid_margin(space, self.cluster_labels_, cluster_means(space, self.cluster_labels_, found))
        if runs:
            # Rows on which every run agrees come first, then by their margin in the space.
            rank = np.argsort(np.argsort(margin, kind="stable"), kind="stable") / max(len(margin) - 1, 1)
            margin = agreement(runs, self.cluster_labels_) + 0.5 * rank
        self._train_score = margin  # how typical each row is of its cluster; for refit_classifier, not saved
        if classify or self.sample_index_ is not None:  # (a classifier assigns the rows not clustered)
            with self._stage(f"training the classifier on {self._count(len(Z))}"):
                self._fit_classifier(Z, assign=self.sample_index_ is None)  # else _assign_all assigns every row once
                self._fit_novelty(X_all if self.sample_index_ is None else X_all[self.sample_index_], Z, seed)
        self.sample_rows_ = None
        if index is not None:
            self.sample_rows_ = (state["rows"], len(Z), len(X_all))
        if self.sample_index_ is not None:
            with self._stage(f"assigning all {self._count(len(X_all))}"):
                self._assign_all(X_all)
        return self

    def _cluster_sample(self, n: int, k: int | None) -> np.ndarray | None:
        """Sorted indices of the rows to choose the pipeline on, or None for all (``max_cluster_rows``)."""
        if self.max_cluster_rows is None:
            return None
        per_cluster = SAMPLE_ROWS_PER_CLUSTER * (k if k is not None else int(self.k_range[1]))
        return self._random_rows(n, max(int(self.max_cluster_rows), per_cluster),
                                 0 if self.random_state is None else int(self.random_state))

    @staticmethod
    def _random_rows(n: int, m: int, seed: int) -> np.ndarray | None:
        """Sorted indices of ``m`` random rows of ``n``, or None when ``n <= m`` (all)."""
        if n <= m:
            return None
        return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))

    def _assign_all(self, X) -> None:
        """After a fit on a sample: every row of ``X`` assigned by the trained classifier.
        Rows outside the sample rank below the sample's in ``_train_score`` (by their
        confidence), so :meth:`refit_classifier` trains on the clustered rows first."""
        idx = self.sample_index_
        Z = self.reducer_.transform(X)
        best, conf = self.classifier_.predict_with_confidence(Z)
        clusters = self.classifier_.classes_[best].astype(np.int64)
        clusters[idx] = self.cluster_labels_
        score = (conf - 1.0) + (float(self._train_score.min()) - 1.0)  # below every clustered row's
        score[idx] = self._train_score
        self.cluster_labels_, self._train_score = clusters, score
        self.labels_, self.confidence_ = self._labels_from(best, conf)
        self.cluster_centers_ = cluster_means(Z, self.labels_, self.n_clusters_)

    def _fit_classifier(self, Z, views=(), assign: bool = True):
        self.classifier_ = PseudoLabelClassifier(self.confident_fraction, self.self_training, kind=self.classifier,
                                                 random_state=self.random_state)
        self.classifier_.fit(Z, self.cluster_labels_, self._train_score, views=list(views))
        self.n_clusters_ = len(self.classifier_.classes_)
        if not assign:
            return self
        keep = getattr(self.classifier_, "copies_keep_", None)
        if views and keep is not None:  # the network averages over the copies it kept only
            views = [np.where(m[:, None], v, Z) for v, m in zip(views, keep)]
        self.labels_, self.confidence_ = self._assign(Z, views)
        self.cluster_centers_ = cluster_means(Z, self.labels_, self.n_clusters_)
        return self

    def refit_classifier(self, X, views):
        """Train the classifier step again with augmented copies of the training rows.

        ``X`` holds the rows the last :meth:`fit` saw, ``views`` a list of arrays shaped like
        it: the features of one augmented copy of every row each (:mod:`visclust.augment`;
        ``ImageClusterer(augment=N)`` makes them). The clustering stays. With
        ``classifier='auto'`` (or ``'mlp'``) a small network learns from every row and its
        copies that still look like the collection (label-free:
        :func:`visclust.classify.plausible_copies`); it can follow clusters a linear rule
        cannot, and the copies teach it what differences do not matter. With
        ``classifier='svm'`` the linear SVM learns from each confident member and all its
        copies (more gain on photos, large losses elsewhere: docs/benchmarks.md).
        ``labels_`` / ``confidence_`` average every row's decision values over the row and
        its (kept) copies; ``classifier='knn'`` is refused (a vote cannot learn from copies).
        :meth:`predict` on new rows uses their own features only. Returns ``self``.
        """
        _check_fitted(self, "classifier_")
        if self.classifier == "knn":
            raise InputError("augmented copies train the network or the SVM, and classifier='knn' asks for the "
                             "vote; use classifier='auto', 'mlp' or 'svm' with them")
        X = _as_features(X)
        score = getattr(self, "_train_score", None)
        if score is None or len(score) != len(X):
            raise InputError("refit_classifier needs the rows of the last fit (same number, same order); "
                             "call fit(X) first")
        with self._stage(f"training the classifier on {self._count(len(X))} and {len(views)} copies of each"):
            return self._fit_classifier(self.transform(X), [self.transform(v) for v in views])

    def _fit_novelty(self, X, Z, seed: int) -> None:
        """Keep training rows ``Z`` (reduced; ``X`` the same rows raw) and the thresholds of
        :meth:`novelty`. Few rows (< 20) give infinite thresholds: nothing is novel."""
        rows = self._random_rows(len(Z), NOVELTY_ROWS, seed + 2)
        self.novelty_reference_ = np.ascontiguousarray(Z if rows is None else Z[rows], np.float32)
        Xr = X if rows is None else X[rows]
        near = residual = float("inf")
        if len(Xr) >= 20:
            d = nearest_distance(self.novelty_reference_, self.novelty_reference_, exclude_self=True)
            near = float(np.quantile(d, NOVELTY_QUANTILE))
            # The reducer's own rows lie closer to its subspace than new rows like them do:
            # their residuals come from reducers fitted without them (the model's dimensions).
            if self.reducer_.n_components is not None:  # no PCA (--pca 0): no subspace to leave
                res = heldout_residuals(Xr, self.reducer_.n_components_, self.reducer_.normalize, random_state=seed + 3)
                residual = float(np.quantile(res, NOVELTY_QUANTILE))
        self.novelty_thresholds_ = (near, residual)

    def novelty(self, X) -> np.ndarray:
        """How unlike the training rows each row of ``X`` is, the larger of two ratios: its
        distance to the nearest kept training row (reduced space) over the distance that
        99.5% of those rows are within of their nearest other one; and its distance from the
        principal subspace (:meth:`Reducer.residual`) over the one 99.5% of training rows
        stay within when the subspace was fitted without them. Above 1: unlike nearly every
        training row; ``reject_novel=True`` makes :meth:`predict` give those -1. The second
        ratio sees what the projection hides: a digit given to a model of photos projects
        among the photos but lies far from their subspace."""
        X = _as_features(X)
        return self._novelty_of(X, self.transform(X))

    def check_novelty_kept(self) -> None:
        """Raise :class:`InputError` when the model has no training rows for :meth:`novelty`
        (a model file written before 2026-12-06): before any image is read, not after."""
        if getattr(self, "novelty_thresholds_", None) is None:
            raise InputError("this model file was written before visclust kept training rows for novelty "
                             "(2026-12-06); refit it to use reject_novel / --reject-novel")

    def _novelty_of(self, X, Z) -> np.ndarray:
        self.check_novelty_kept()
        # a floor: features of no more dimensions than the subspace leave only rounding in it
        near, residual = (max(t, 1e-3) for t in self.novelty_thresholds_)
        return np.maximum(nearest_distance(Z, self.novelty_reference_) / near, self.reducer_.residual(X) / residual)

    def _assign(self, Z, views=()):
        return self._labels_from(*self.classifier_.predict_with_confidence(Z, list(views)))

    def _labels_from(self, best, conf):
        labels = self.classifier_.classes_[best].astype(np.int64)
        if self.reject_threshold > 0:
            labels = np.where(conf < self.reject_threshold, -1, labels)
        return labels, conf

    def transform(self, X):
        """The reduced features ``(n_samples, n_components_)`` the classifier works in."""
        _check_fitted(self, "classifier_")
        X = _as_features(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input; use features from the same backbone as at fit")
        return self.reducer_.transform(X)

    def predict_with_confidence(self, X):
        """Cluster (-1 when rejected) and confidence in [0, 1] for each row."""
        X = _as_features(X)
        Z = self.transform(X)
        labels, conf = self._assign(Z)
        if self.reject_novel:
            labels = np.where(self._novelty_of(X, Z) > 1.0, -1, labels)
        return labels, conf

    def predict(self, X):
        return self.predict_with_confidence(X)[0]

    def predict_proba(self, X):
        """Calibrated probability of each cluster ``(n_samples, n_clusters_)``."""
        Z = self.transform(X)  # checks that the model is fitted
        return self.classifier_.predict_proba(Z)

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model as one safe file (see :mod:`visclust.artifact`)."""
        from .artifact import save_model

        save_model(self, path)


def describe_sample(fc, views: bool = False) -> str | None:
    """``fit``'s line when the clustering ran on a sample (``max_cluster_rows``), else None;
    ``views``: the view (input size, pixels) was chosen on the same sample."""
    sample = getattr(fc, "sample_rows_", None)
    if not sample:
        return None
    chosen, clustered, rows = sample
    then = ("then clustered all of them with it" if clustered >= rows else
            f"then clustered a random {clustered:,} with it; the classifier assigned the others")
    what = "the view and the pipeline" if views else "the pipeline"
    return f"clustered: chose {what} on a random {chosen:,} of {rows:,} images (--max-cluster-rows), {then}"


def _as_features(X) -> np.ndarray:
    """``X`` as a dense finite float matrix ``(n_samples, n_features)`` (float32 unless it is float64)."""
    from sklearn.utils.validation import check_array

    try:
        return check_array(X, accept_sparse=False, dtype=[np.float32, np.float64], ensure_all_finite=True)
    except (TypeError, ValueError) as e:  # on one line, without the array some of scikit-learn's messages print
        said = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("[", "array="))]
        first = " ".join(said) or type(e).__name__
        raise InputError(f"{first} (features must be a dense numeric matrix (n_samples, n_features); "
                         "densify sparse input with X.toarray())") from e


def describe_configs(cfgs, sizes: bool | None = None) -> str:
    """The backbones of ``cfgs`` as people read them, ``' + '`` between: with their input
    size when ``sizes`` (None: when a network comes more than once, at two sizes)."""
    names = [c.name for c in cfgs]
    if sizes is None:
        sizes = len(set(names)) != len(names)
    return " + ".join(f"{c.name} at {c.preprocess.input_size} px" if sizes and not c.name.startswith("baseline/")
                      else c.name for c in cfgs)


def backbone_specs(backbone, weights, repeats: bool = False) -> list[tuple[str, str | None]]:
    """``[(name, weights file or None), ...]`` for ImageClusterer's ``backbone`` and ``weights``
    parameters (a name or a list; a file, a list, or one file per backbone that takes weights).
    ``repeats``: a fitted model's backbones, where one network may come twice (at two input
    sizes, ``classifier_views``); one weights file per network then serves each."""
    names = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"backbone must be a backbone name or a list of names, got {backbone!r}")
    if len(set(names)) != len(names) and not repeats:
        raise InputError(f"backbone lists the same backbone twice ({', '.join(names)}); give each once")
    files = [None] * len(names) if weights is None else \
        list(weights) if isinstance(weights, (list, tuple)) else [weights]
    takes = [i for i, n in enumerate(names) if not n.startswith("baseline/")]  # backbones with weights
    networks = list(dict.fromkeys(names[i] for i in takes))  # each network once, in order
    if len(files) != len(names) and len(networks) < len(takes) and len(files) == len(networks):
        files = [None if n.startswith("baseline/") else files[networks.index(n)] for n in names]
    if len(files) != len(names):
        if len(files) != len(takes):
            raise InputError(f"{len(files)} weights file(s) for {len(names)} backbone(s); give one per backbone, "
                             "in the same order ('-' for a backbone's default weights)")
        given, files = files, [None] * len(names)  # one per backbone that takes weights, in order
        for i, f in zip(takes, given):
            files[i] = f
    return [(n, None if f in (None, "", "-") else os.fspath(f)) for n, f in zip(names, files)]


#: A view that makes the model bigger (the raw pixels added) is kept only if it removes at least
#: this share of the first view's disagreement between runs (1 - stability).
VIEW_GAIN = 0.25

#: The raw pixels, when they are more stable, must also keep at least this share of the backbone
#: partition's support among the backbone's own neighbours (:func:`visclust.select.neighbour_support`):
#: on photos the pixels make a partition by colour reproducible, one the backbone's neighbours
#: do not share. The same quarter as :data:`VIEW_GAIN`, here as the most the pixels may lose.
PIXELS_SUPPORT = 1.0 - VIEW_GAIN


#: Images of the collection (a random sample of the rows the views are compared on) whose
#: augmented copies test the input sizes (:meth:`ImageClusterer._size_by_copies`).
SIZE_TEST_IMAGES = 2000

#: The input sizes' copy retrieval (:func:`visclust.select.copy_retrieval`) decides only where
#: it differs at this significance (McNemar's exact test, :func:`visclust.select.paired_test`);
#: otherwise the most central candidate of both sizes decides.
SIZE_TEST_P = 0.01


def size_by_copies(shares: dict, p: float | None):
    """The input size the augmented-copy test chose: the view with the larger share of copies
    recognised (``ImageClusterer.view_copies_``) where McNemar's p (``view_copies_p_``) is
    below :data:`SIZE_TEST_P`; None where the test did not run or did not decide. (A p below
    it means the sizes recognised different numbers of copies, so the shares differ.)"""
    if not shares or p is None or p >= SIZE_TEST_P:
        return None
    return max(shares, key=shares.get)


def pixels_supported(base_support: float, pixels_support: float) -> bool:
    """Whether the pixels view's partition keeps enough of the backbone partition's support among
    the backbone's neighbours (:data:`PIXELS_SUPPORT`); a support that could not be measured
    (too few rows) does not refuse the pixels."""
    if not (np.isfinite(base_support) and np.isfinite(pixels_support)):
        return True
    return pixels_support >= PIXELS_SUPPORT * base_support - 1e-12


def view_wins(base_score: float, other_score: float, gain: float = VIEW_GAIN) -> bool:
    """Whether another view's stability beats the base view's by enough.

    Stabilities are mean ARIs between runs; what matters is the disagreement ``1 - score``:
    0.984 -> 0.992 halves it (a clear gain), 0.50 -> 0.51 removes 2% of it (noise). So a view
    that costs more (the pixels: a second extraction at predict time, a bigger model) must
    remove at least ``gain`` of the base view's disagreement; otherwise the base view stays.
    The input sizes are compared with ``gain=0`` (the more stable one wins, a tie keeps the
    base view) only where :func:`_central_view` cannot compare their candidates.
    """
    enough = (1.0 - other_score) <= (1.0 - gain) * (1.0 - base_score) + 1e-12
    return enough and other_score > base_score


def _image_list(images) -> list:
    """Images in memory as a list: one image, a list of them, or an (n, h, w, c) array."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _in_memory(X) -> bool:
    """Whether ``X`` holds images in memory (PIL images, numpy arrays) rather than paths."""
    from .io import is_image_object

    if is_image_object(X):
        return True
    if isinstance(X, (list, tuple)) and X and any(is_image_object(x) for x in X):
        if any(isinstance(x, (str, bytes, os.PathLike)) for x in X):
            raise InputError("give either paths or images in memory (PIL images, numpy arrays), not both in one call")
        return True  # anything else among the images is refused by name (assign_images)
    return False


def _joined(parts):
    """One FeatureResult from the results of several backbones (side by side) or of one."""
    from .features import concat_features

    return parts[0] if len(parts) == 1 else concat_features(parts)


def _small_view_name(alt) -> str:
    """The name of the view of :meth:`ImageClusterer._small_image_view`'s backbones, e.g.
    ``'backbone@128px'`` (``view_scores_``' and ``view_copies_``' key)."""
    return f"backbone@{alt[0].preprocess.input_size}px"


def _given_features(features, bbs):
    """``fit(features=...)``'s result, checked against the backbones the model records."""
    width = sum(bb.feature_dim for bb in bbs)
    got = np.shape(getattr(features, "features", None))
    if len(got) != 2 or got[1] != width or len(features.paths) != got[0]:
        raise InputError(f"the features given to fit have shape {got}, and the backbones "
                         f"({', '.join(bb.name for bb in bbs)}) give {width} columns; compute them with extract() "
                         "of a model with the same parameters")
    return features


def _check_some(res) -> None:
    if len(res.paths) == 0:
        from .exceptions import NoImagesError

        first = res.skipped[0][1] if res.skipped else "-"
        raise NoImagesError(f"none of the {len(res.skipped)} images could be read (first: {first})")


def _chosen_score(fc) -> float:
    """A view's score: the stability of its most stable pipeline (the selection's scores),
    which the pixels view must clearly beat."""
    return max(map(float, fc.pipeline_scores_.values()), default=float("-inf"))


def _central_view(states: dict, paths: dict, names: list, only: str | None = None) -> str | None:
    """The view whose candidate is the most central among the candidates of every view in
    ``names`` (:func:`visclust.select.centrality` over their runs), made that view's chosen
    pipeline; each view's ``pipeline_centrality_`` becomes its candidates' centrality among
    them all. With ``only`` (a view already chosen by another test) that view is returned and
    its most central candidate (among them all) made its pipeline. None where a view has no
    selection (one candidate) or the views did not read the same images (``paths``), so that
    their runs do not label the same rows."""
    from .select import centrality, most_central

    runs, stab = {}, {}
    for v in names:
        sel = states[v][0].__dict__.get("selection_")
        if sel is None or list(paths[v]) != list(paths[names[0]]):
            return None
        for c, r in sel.runs.items():
            runs[v, c], stab[v, c] = r, sel.scores[c]
    central = centrality(runs, stab)
    view, name = most_central({k: c for k, c in central.items() if only is None or k[0] == only}, stab)
    states[view][0]._use_candidate(states[view][1], name)
    for v in names:
        states[v][0].pipeline_centrality_ = {c: central[v, c] for c in states[v][0].selection_.runs}
    return view


class ImageClusterer(BaseEstimator):
    """Group image files by what they show and assign new images to the groups.

    Parameters
    ----------
    backbone : str or list of str, default 'torchvision/mobilenet_v2'
        A name from :func:`visclust.backbones.list_backbones` (or ``timm/<model>``,
        ``open_clip/<arch>:<tag>``). A list concatenates the features of several backbones:
        each backbone's vector is L2-normalised, then they are put side by side, so each
        weighs the same whatever its dimension (:func:`visclust.features.concat_features`);
        an image any of them cannot read is skipped.
    weights : str or list, optional
        Local weights file (.safetensors, or .pth loaded with ``weights_only=True``);
        default downloads the pretrained weights the usual way. With several backbones, one
        entry per backbone in the same order (None or ``'-'``: the default weights), or one
        per backbone that takes weights (``baseline/*`` take none).
    pretrained : bool, default True
        False keeps random weights (for testing plumbing only).
    n_clusters : int or 'auto', default 8
    clusterer : FeatureClusterer, optional
        Template for the clustering stage (its ``n_clusters`` is replaced by ``n_clusters``).
    batch_size : int, default 64
    num_workers : int, optional
        Decoding processes (default: one per spare core). With ``augment``, also the
        processes that write the copies (default: one per core; 0 writes them in this process).
    device : str, optional
        Default CUDA when available, else CPU.
    progress : bool, optional
        Progress bar (default: when stderr is a terminal).
    store : str, optional
        Feature store directory (:class:`visclust.store.FeatureStore`): features already
        there are reused, new ones are added, so nothing is computed twice.
    engine : {'auto', 'torch', 'onnx'}, default 'auto'
        What runs the network (:func:`visclust.engines.create_engine`): ``'auto'`` is
        ONNX Runtime on CPU when installed, PyTorch on CUDA.
    pixels : {'auto', True, False}, default 'auto'
        Also use the images' raw pixels (``baseline/pixels``: 32 x 32 RGB, L2-normalised and
        concatenated with the backbone's features). ``'auto'``: fit the clustering both
        without and with them and keep the one whose chosen pipeline is the more
        reproducible (its stability, the label-free score of the selection; the pixels must
        remove at least a quarter of the disagreement between runs, :func:`view_wins`).
        Pixels help where appearance is the grouping (digits, symbols, icons) and hurt on
        natural photos, and the score tells which on the user's own images. Applies only
        when the selection compares candidates (``method`` or ``space`` 'auto'), K is given, ``baseline/pixels`` is not already a backbone and ``fit`` is
        not given precomputed ``features``; it doubles the clustering time. True: always
        concatenate; False: never. On more images than the clusterer's ``max_cluster_rows``
        the views (with ``input_size='auto'`` too) are compared on the random sample its
        selection chooses on, the same images for each view: only that sample is extracted
        for the views that lose, and only the winner is extracted, clustered and held in
        memory for every image.
    input_size : {'auto', 'backbone'} or int, default 'auto'
        Size of the network's input. ``'backbone'``: the backbone's own preprocessing (e.g.
        resize to 256, centre-crop 224). An int N: every image resized to N x N, no crop (for
        CNN backbones; refused with a clear error when the network does not run at that
        size). ``'auto'``: for collections of small images, which the backbone's
        preprocessing enlarges 4 times or more (CIFAR's 32 x 32, MNIST's 28 x 28), fit the
        clustering on the features at the backbone's size and at 4 times the images' size
        (:func:`visclust.features.small_image_preprocess`, e.g. 128 for 32 x 32 images) and
        keep the size whose features recognise clearly more augmented copies of the images
        (one copy of up to :data:`SIZE_TEST_IMAGES` images; McNemar's p <
        :data:`SIZE_TEST_P`; ``view_copies_``), else the size holding the candidate most
        central among both sizes' candidates (``view_centrality_``); other collections, or a
        backbone that does not run at the smaller size, use the backbone's size. Applies
        when the selection compares candidates (as for ``pixels='auto'``), with one backbone
        and no precomputed ``features``; it extracts the features a second time at the
        smaller size (a third of the cost at 128 against 224), fits the clustering once more
        and extracts the copies at both sizes. With ``n_clusters='auto'``, whose choice of K
        gives no score comparable between the sizes, the copies alone decide and the
        backbone's size is kept where they do not (no second clustering). The chosen size is
        saved in the model, so ``predict`` computes the same features.
    augment : int, default 0
        Augmented copies of each training image (random crop, mirror, colour jitter,
        greyscale: :mod:`visclust.augment`) whose features train the classifier step with
        their image's cluster (:meth:`FeatureClusterer.refit_classifier`): a small network
        on every image and its copies that still look like the collection (the linear SVM
        on all copies with ``classifier='svm'``); the training images' ``labels_`` average
        over each image and its kept copies. Each copy costs one more extraction of the
        collection (written to a temporary directory, never stored). With 3 copies: CIFAR-10
        test 0.517 -> 0.535 ACC (3 seeds), within 0.005 on MNIST, emoji and Fashion-MNIST; with the SVM
        CIFAR-10 0.544 but ACC falls elsewhere (docs/benchmarks.md). 0: off.
    classifier_views : {'chosen', 'sizes', 'all'}, default 'chosen'
        What the classifier step, and so ``predict``, learns from, where ``fit`` compared
        views on every image (``input_size`` or ``pixels`` 'auto'). ``'chosen'``: the
        features of the view kept for the clustering. ``'sizes'``: those and, beside them,
        the backbone's at the other input size compared (each L2-normalised), trained with
        the chosen clustering's pseudo-labels (:meth:`FeatureClusterer.train_classifier_on`),
        so ``predict`` computes both sizes: where the clustering's view is the weaker of the
        two, the other corrects some of its mistakes (224 px features of digits, sketches and
        CIFAR-10: +0.017 to +0.031 ACC), but on the views the default keeps the whole fit is
        level (docs/benchmarks.md, "The classifier step on other features of the same
        images"). ``'all'``: also the raw pixels where they were compared and not kept. On
        more images than ``max_cluster_rows`` the losing views were computed for the sample
        only, and the chosen view is used, with a warning.

    Attributes
    ----------
    paths_ : list of str
        The training images that could be read, in order.
    labels_, confidence_ : ndarray (n_images,)
    skipped_ : list of (path, reason)
    feature_clusterer_ : FeatureClusterer
    backbone_configs_ : list of BackboneConfig
        One per backbone, in order.
    backbone_config_ : BackboneConfig
        The first of them (the only one unless features are concatenated).
    view_scores_ : dict {str: float}
        The stability of the most stable pipeline in each view compared: ``'backbone'`` (the
        backbone's own input size), ``'backbone@128px'`` (``input_size='auto'`` on small
        images: the smaller input size), and with ``pixels='auto'`` the winner of those with
        the pixels added (``'backbone+pixels'`` or ``'backbone@128px+pixels'``); empty when no
        comparison ran. Between the input sizes the view kept is the one whose features
        recognise clearly more augmented copies (``view_copies_``), else the one whose
        candidate is the most central among the candidates of both (``view_centrality_``);
        the pixels are kept where they are clearly more stable and supported (``view_support_``).
    view_centrality_ : dict {str: float}
        For the input sizes compared: the highest centrality of each view's candidates among
        the candidates of both (:func:`visclust.select.centrality`); empty otherwise.
    view_copies_ : dict {str: float}
        For the input sizes compared: the share of augmented copies whose nearest image among
        all the compared rows is their own original, at each size
        (:func:`visclust.select.copy_retrieval`); empty otherwise. ``view_copies_p_`` is
        McNemar's exact p-value of their difference (None when not compared); below
        :data:`SIZE_TEST_P` the size with the larger share is kept.
    view_support_ : dict {str: float}
        When the pixels view was the more stable: the support of its partition and of the view
        without pixels among the latter's neighbours (:func:`visclust.select.neighbour_support`);
        the pixels are kept only if theirs is at least :data:`PIXELS_SUPPORT` of the other's.
        Empty otherwise.
    view_ : str or None
        The view kept, one of ``view_scores_``' keys; with ``n_clusters='auto'`` the input
        size the copies chose, one of ``view_copies_``' keys (``'backbone'`` where they did
        not decide). None when no comparison ran; not saved in the model file.
    classifier_view_ : str or None
        The features the classifier learnt from when they are not the chosen view's
        (``classifier_views``), e.g.
        ``'torchvision/mobilenet_v2 at 224 px + torchvision/mobilenet_v2 at 128 px +
        baseline/pixels'`` (``backbone_configs_`` lists them); None when it learnt from the
        chosen view (not saved in the model file).
    n_clusters_ : int

    Examples
    --------
    >>> model = ImageClusterer(n_clusters=10).fit(["photos/"])        # doctest: +SKIP
    >>> model.assign(["new_photos/"]).clusters                         # doctest: +SKIP
    """

    def __init__(self, backbone: str = "torchvision/mobilenet_v2", weights: str | None = None, pretrained: bool = True,
                 n_clusters=8, clusterer: FeatureClusterer | None = None, batch_size: int = 64,
                 num_workers: int | None = None, device: str | None = None, progress: bool | None = None,
                 store: str | None = None, engine: str = "auto", pixels="auto", input_size="auto", augment: int = 0,
                 classifier_views: str = "chosen"):
        self.backbone = backbone
        self.weights = weights
        self.pretrained = pretrained
        self.n_clusters = n_clusters
        self.clusterer = clusterer
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.progress = progress
        self.store = store
        self.augment = augment
        self.engine = engine
        self.pixels = pixels
        self.input_size = input_size
        self.classifier_views = classifier_views

    # -- backbone -----------------------------------------------------------------------
    def backbone_specs(self) -> list[tuple[str, str | None]]:
        """``[(name, weights file or None), ...]``, one per backbone, checked."""
        return backbone_specs(self.backbone, self.weights, repeats=getattr(self, "backbone_configs_", None) is not None)

    def weights_hint(self) -> list | str | None:
        """The weights files the fitted backbones came from, as ``weights`` takes them: the
        parameter itself, or one entry per backbone when the model uses a network more than
        once (``classifier_views``), for the model file to name."""
        cfgs = getattr(self, "backbone_configs_", None) or []
        names = [c.name for c in cfgs]
        if len(set(names)) == len(names):
            return self.weights
        files = dict(backbone_specs(list(dict.fromkeys(names)), self.weights))
        return [files[n] for n in names]

    def get_backbones(self) -> list:
        """The backbones (built once and cached); after ``load`` they must match the fitted ones."""
        bbs = getattr(self, "_backbones", None)
        if bbs is None:
            from .backbones import Backbone, create_backbone

            specs = self.backbone_specs()
            fitted = getattr(self, "backbone_configs_", None)
            if fitted is not None and len(fitted) != len(specs):
                raise InputError(f"the model was fitted with {len(fitted)} backbone(s), not {len(specs)}")
            bbs = []
            for i, (name, weights) in enumerate(specs):
                bb = create_backbone(name, weights=weights, pretrained=self.pretrained)
                if fitted is not None:
                    f = fitted[i]
                    if bb.config.weights_sha256 != f.weights_sha256:
                        raise WeightsUnavailableError(
                            f"the model was fitted with other weights for '{f.name}' (sha256 "
                            f"{f.weights_sha256[:12]}..., now {bb.config.weights_sha256[:12]}...); "
                            "pass the same weights file with --weights"
                        )
                    bb = Backbone(bb.info, bb.module, f.preprocess, f.weights_sha256, bb.weights_source)
                bbs.append(bb)
            self._backbones = bbs
        return bbs

    def get_backbone(self):
        """The backbone, when there is one (see :meth:`get_backbones`)."""
        bbs = self.get_backbones()
        if len(bbs) != 1:
            raise InputError(f"this model concatenates {len(bbs)} backbones; use get_backbones()")
        return bbs[0]

    @staticmethod
    def _small_image_view(backbones, paths, short_side: int | None = None) -> list | None:
        """``[backbone at the smaller input size]`` on small images (one backbone), else None."""
        from .features import small_image_backbone

        bb = small_image_backbone(backbones[0], paths, short_side) if len(backbones) == 1 else None
        return None if bb is None else [bb]

    def _engine(self, bb):
        """The engine computing ``bb``'s features, made once per view, engine and device and
        then kept: making one (ONNX Runtime's session and its check against PyTorch on a
        batch) took 53 ms on the 2-core machine, where assigning one image then took 3-7 ms
        (docs/benchmarks.md, "Assigning images one at a time")."""
        from .engines import create_engine

        key = (bb.config.cache_key(), self.engine, None if self.device is None else str(self.device))
        engines = self.__dict__.setdefault("_engines", {})
        if key not in engines:
            engines[key] = create_engine(bb, self.engine, self.device)
        return engines[key]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_engines", None)  # sessions of ONNX Runtime do not pickle; made again when needed
        return state

    def _extract_each(self, backbones, paths, desc: str | None = None) -> list:
        from .features import FeatureResult, extract_features, extract_images

        memory = self.__dict__.get("_memory")
        if memory is not None:  # a fit on images in memory: no files to read, nothing stored
            images, names = [memory[p] for p in paths], list(paths)
            return [FeatureResult(extract_images(bb, images, batch_size=self.batch_size, engine=self._engine(bb),
                                                 names=names, progress=self.progress,
                                                 desc=bb.name if desc is None else f"{bb.name}, {desc}"), names)
                    for bb in backbones]

        # with a store the engine is made only if some image has no stored row yet
        return [extract_features(bb, paths, batch_size=self.batch_size, num_workers=self.num_workers,
                                 device=self.device, progress=self.progress, store=self.store,
                                 engine=self.engine if self.store is not None else self._engine(bb),
                                 desc=None if desc is None else f"{bb.name}, {desc}")
                for bb in backbones]

    def _copies_features(self, backbones, paths: list, originals: np.ndarray, n_copies: int,
                         label: str | None = None) -> list:
        """Features of ``n_copies`` augmented copies of every image in ``paths``, one array per
        copy in the order of ``paths`` (:mod:`visclust.augment`). A copy that cannot be made
        or read gets its original's row of ``originals``, so no row is lost. Copies are
        written, extracted and deleted ``COPY_CHUNK_IMAGES`` images at a time. ``label``
        names them in the progress bars (default: ``augmented copy i/n``)."""
        from .augment import write_copies
        from .features import concat_features, extract_features
        from .io import work_folder

        seed = int(getattr(self.clusterer, "random_state", 0) or 0)
        short = max(bb.preprocess.resize_size or bb.preprocess.input_size for bb in backbones)
        out = []
        step = COPY_CHUNK_IMAGES
        with work_folder("visclust-copies-") as tmp:
            for view in range(n_copies):
                feats = np.array(originals, np.float32)
                for s in range(0, len(paths), step):  # the disk holds one part's copies at a time
                    part = f", images {s + 1}-{min(s + step, len(paths))} of {len(paths)}" if len(paths) > step else ""
                    what = f"augmented copy {view + 1}/{n_copies}{part}" if label is None else f"{label}{part}"
                    copies = write_copies(paths[s:s + step], tmp, view, seed=seed, short_side=2 * short,
                                          progress=self.progress, desc=f"{what}: writing", start=s,
                                          workers=self.num_workers)
                    made = [c for c in copies if c is not None]
                    parts = [extract_features(bb, made, batch_size=self.batch_size, num_workers=self.num_workers,
                                              device=self.device, progress=self.progress, engine=self._engine(bb),
                                              desc=f"{what}: {bb.name}")
                             for bb in backbones]
                    res = parts[0] if len(parts) == 1 else concat_features(parts)
                    row = {p: i for i, p in enumerate(res.paths)}
                    for i, c in enumerate(copies):
                        if c in row:
                            feats[s + i] = res.features[row[c]]
                    for c in made:
                        os.unlink(c)
                out.append(feats)
        return out

    def _features_of(self, backbones, paths, known=None):
        """Features of ``paths`` from every backbone, side by side when there are several, in
        the order of ``paths``; the rows (and skipped images) of ``known``, a result of the
        same backbones, are not computed again. See :data:`FIT_CHUNK_IMAGES`."""
        from .features import FeatureResult, merge_results

        if known is None and (len(backbones) == 1 or len(paths) <= FIT_CHUNK_IMAGES):
            return _joined(self._extract_each(backbones, paths))
        done = set() if known is None else set(known.paths) | {p for p, _ in known.skipped}
        out, kept, skipped, step = None, [], [], FIT_CHUNK_IMAGES
        for s in range(0, len(paths), step):
            chunk = paths[s:s + step]
            todo = [p for p in chunk if p not in done]
            desc = f"images {s + 1}-{s + len(chunk)} of {len(paths)}" if len(paths) > step else None
            parts = [_joined(self._extract_each(backbones, todo, desc=desc))] if todo else []
            part = merge_results(parts + ([] if known is None else [known]), chunk)
            if out is None:
                out = np.empty((len(paths), part.features.shape[1]), np.float32)
            out[len(kept):len(kept) + len(part.paths)] = part.features
            kept += part.paths
            skipped += part.skipped
        return FeatureResult(out[:len(kept)], kept, skipped)

    def _fit_views(self, fc, bbs, alt, use_pixels, paths):
        """Choose the view, then fit ``fc`` on the winner alone: between the input sizes (``alt``
        on small images) the one whose features recognise clearly more augmented copies
        (:meth:`_size_by_copies`), else the one holding the most central candidate among both
        sizes' candidates (:func:`_central_view`), then the raw pixels beside it if that view
        is clearly more stable (each view's most stable pipeline) and supported.

        On a collection larger than ``fc``'s ``max_cluster_rows`` the views are compared on
        the random sample its selection would choose on (the same images for every view, so
        the same scores as a fit of each view whole): only that sample is extracted for the
        views that lose, and only the winner's features of the whole collection are computed
        and held in memory. Returns ``(fitted fc, backbones, features, view name)``.
        """
        from .backbones import create_backbone

        index = fc._cluster_sample(len(paths), fc._validate_params())
        rows = paths if index is None else [paths[i] for i in index]
        sampled = index is not None
        views, states = {}, {}

        def add(name, backbones, parts):
            res = _joined(parts)
            _check_some(res)
            f = clone(fc)
            f._stage_unit, f._stage_view = "images", f"{name}: "
            views[name] = (backbones, parts, res)
            states[name] = (f, f._select_on(res.features, sampled))
            return _chosen_score(f)

        px = create_backbone("baseline/pixels") if use_pixels else None
        always = use_pixels and self.pixels is True  # pixels=True: beside every view, not tested
        extra, suffix = ([px], "+pixels") if always else ([], "")
        base = "backbone" + suffix
        scores = {base: add(base, bbs + extra, self._extract_each(bbs + extra, rows))}
        if alt is not None:  # the backbone at a smaller input size
            name = _small_view_name(alt) + suffix
            scores[name] = add(name, alt + extra, self._extract_each(alt + extra, rows))
            # the size whose features recognise clearly more augmented copies of the images;
            # where neither does, the view whose candidate the candidates of both sizes agree with most
            by_copies = self._size_by_copies(fc, views, base, name)
            central = _central_view(states, {v: views[v][2].paths for v in views}, [base, name], only=by_copies)
            if central is None and by_copies is not None:
                base = by_copies
            elif central is not None:
                self.view_centrality_ = {v: max(states[v][0].pipeline_centrality_.values()) for v in (base, name)}
                base = central
            elif view_wins(scores[base], scores[name], gain=0.0):  # no dearer
                base = name
        if use_pixels and not always:  # the winner so far with the raw pixels beside; kept if clearly more stable
            vbbs, vparts, vres = views[base]
            name = base + "+pixels"
            scores[name] = add(name, vbbs + [px], vparts + self._extract_each([px], list(vres.paths)))
            if view_wins(scores[base], scores[name]):
                support = self._neighbour_supports(states[base], states[name], vres.paths, views[name][2].paths)
                self.view_support_ = {base: support[0], name: support[1]}
                if pixels_supported(*support):
                    base = name
        self.view_scores_ = scores
        (wbbs, _, wres), (f, state) = views[base], states[base]
        every = None if self.classifier_views == "chosen" or sampled else \
            self._every_view(views, base, pixels=self.classifier_views == "all")
        views.clear()  # the losing views' features are not needed any more
        if not sampled:
            f._finish(wres.features, None, state, classify=every is None)
            if every is None:
                return f, wbbs, wres, base
            self.classifier_view_ = describe_configs([bb.config for bb in every[0]], sizes=True)
            return f.train_classifier_on(every[1].features), every[0], every[1], base
        if self.classifier_views != "chosen":
            warnings.warn(f"classifier_views={self.classifier_views!r} needs every view of every image; the views "
                          f"were compared on a sample of {len(rows):,} images, so the classifier learns from the "
                          f"chosen view ({base}) alone", stacklevel=3)
        res = self._features_of(wbbs, paths, known=wres)  # the sample's rows are not computed again
        at = {p: i for i, p in enumerate(res.paths)}
        index = np.asarray([at[p] for p in wres.paths], np.int64)  # the rows the selection saw
        return f._finish(res.features, index, state), wbbs, res, base

    def _size_by_copies(self, fc, views: dict, a: str, b: str) -> str | None:
        """Between two views of the backbone at different input sizes, the one whose features
        recognise more augmented copies of the images, if clearly more; else None.

        One augmented copy (:mod:`visclust.augment`: a crop, a mirror image, colour changes) of
        each of up to :data:`SIZE_TEST_IMAGES` images of the views' rows is written and
        extracted at both sizes; a copy is recognised where its nearest image (cosine) among
        all the rows is its own original (:func:`visclust.select.copy_retrieval`). The size
        that recognises more wins if McNemar's exact test says the difference is not chance
        (p < :data:`SIZE_TEST_P`). Enlarged 4 times or more, a small image becomes blurred
        blobs; the size at which its features still recognise it after these changes sees
        more of what it shows. Sets ``view_copies_`` ({view: share recognised}) and
        ``view_copies_p_``. The raw pixels beside a view (``pixels=True``) take no part.
        """
        from .select import copy_retrieval, paired_test

        ra, rb = views[a][2], views[b][2]
        if list(ra.paths) != list(rb.paths) or len(ra.paths) < 2:
            return None

        def backbone_parts(view):
            kept = [(bb, part) for bb, part in zip(views[view][0], views[view][1]) if not bb.name.startswith("baseline/")]
            return [bb for bb, _ in kept], _joined([part for _, part in kept]).features

        (abbs, fa), (bbbs, fb) = backbone_parts(a), backbone_parts(b)
        paths = list(ra.paths)
        seed = 0 if fc.random_state is None else int(fc.random_state)
        rows = np.sort(np.random.default_rng(seed).choice(len(paths), min(SIZE_TEST_IMAGES, len(paths)),
                                                          replace=False))
        with fc._stage(f"input sizes: augmented copies of {len(rows):,} images recognised at each"):
            # one set of copies, extracted at both sizes; each size's part is normalised as in its view
            copies = self._one_copy_each(abbs + bbbs, [paths[i] for i in rows], seed,
                                         np.concatenate([fa[rows], fb[rows]], axis=1))
            width = fa.shape[1]
            hits = {a: copy_retrieval(fa, copies[:, :width], rows), b: copy_retrieval(fb, copies[:, width:], rows)}
        self.view_copies_ = {v: float(h.mean()) for v, h in hits.items()}
        self.view_copies_p_ = paired_test(hits[a], hits[b])
        return size_by_copies(self.view_copies_, self.view_copies_p_)

    def _size_by_copies_alone(self, fc, bbs, alt, paths, pixels: bool):
        """With ``n_clusters='auto'`` on small images: the input size whose features recognise
        clearly more augmented copies (:meth:`_size_by_copies`), else the backbone's own. Both
        sizes are extracted for the rows ``fc``'s selection would choose on (a random sample of
        a large collection), then the winner for the other rows; ``pixels`` (``pixels=True``):
        the raw pixels beside each size, taking no part in the test. Returns ``(backbones,
        features of every image, view name)``."""
        index = fc._cluster_sample(len(paths), None)
        rows = paths if index is None else [paths[i] for i in index]
        suffix = "+pixels" if pixels else ""
        base, small = "backbone" + suffix, _small_view_name(alt) + suffix
        views = {}
        for name, backbones in ((base, bbs), (small, alt)):
            backbones = self._with_pixels(backbones) if pixels else backbones
            parts = self._extract_each(backbones, rows)
            views[name] = (backbones, parts, _joined(parts))
            _check_some(views[name][2])
        won = self._size_by_copies(fc, views, base, small) or base
        wbbs, _, wres = views[won]
        views.clear()  # the other size's features are not needed any more
        res = wres if index is None else self._features_of(wbbs, paths, known=wres)
        return wbbs, res, won

    def _one_copy_each(self, backbones, paths: list, seed: int, originals: np.ndarray) -> np.ndarray:
        """Features of one augmented copy of each image (from its file, or of the image in
        memory for a fit on images: copy ``i`` drawn from ``(seed, 0, i)`` as the files' are),
        every backbone's part L2-normalised as :func:`visclust.features.concat_features` does."""
        memory = self.__dict__.get("_memory")
        if memory is None:
            return self._copies_features(backbones, paths, originals, 1, label="input-size test, augmented copies")[0]
        from PIL import Image

        from .augment import augment_image
        from .features import FeatureResult, concat_features, extract_images
        from .io import image_object_array

        images = [augment_image(Image.fromarray(image_object_array(memory[p], p), "RGB"),
                                np.random.default_rng([seed, 0, i])) for i, p in enumerate(paths)]
        return concat_features([FeatureResult(extract_images(bb, images, batch_size=self.batch_size,
                                                             engine=self._engine(bb), names=paths), list(paths))
                                for bb in backbones]).features

    @staticmethod
    def _every_view(views: dict, base: str, pixels: bool):
        """``(backbones, FeatureResult)``: the features of every view compared, each backbone
        (and size) once, the chosen view's first, for the classifier step
        (``classifier_views``); the raw pixels of a view that lost only if ``pixels``. None
        when the chosen view already holds them all or the views did not read the same images."""
        seen = {}
        for name in [base] + [n for n in views if n != base]:
            vbbs, vparts, _ = views[name]
            for bb, part in zip(vbbs, vparts):
                if name == base or pixels or not bb.name.startswith("baseline/"):
                    seen.setdefault(bb.config.cache_key(), (bb, part))
        if len(seen) == len(views[base][0]):
            return None
        res = _joined([part for _, part in seen.values()])
        if list(res.paths) != list(views[base][2].paths):
            return None
        return [bb for bb, _ in seen.values()], res

    @staticmethod
    def _neighbour_supports(base_state, pixels_state, base_paths, pixels_paths) -> tuple[float, float]:
        """Support of the base view's chosen partition and of the pixels view's among the base
        view's neighbours (its reduced features of the rows both views saw)."""
        from .select import neighbour_support

        (fb, sb), (fp, _) = base_state, pixels_state
        at = {p: i for i, p in enumerate(base_paths)}
        rows = np.asarray([at[p] for p in pixels_paths], np.int64)  # the pixels view's rows among the base's
        seed = fb.random_state
        return (neighbour_support(sb["Z"][rows], np.asarray(fb.cluster_labels_)[rows], random_state=seed),
                neighbour_support(sb["Z"][rows], np.asarray(fp.cluster_labels_), random_state=seed))

    def extract(self, inputs):
        """Features of the images in ``inputs`` (files, directories, list files, or images in
        memory as :meth:`assign_images` takes them): after a fit, of the view it chose; before,
        of the backbones named, at ``input_size`` when it is a number and with the raw pixels
        when ``pixels=True``, as :meth:`fit` takes them in ``features``."""
        if _in_memory(inputs):
            return self._images_features(inputs)
        return _joined(self._extract_each(self._extract_backbones(), collect_inputs(inputs)))

    def _extract_backbones(self) -> list:
        """The fitted model's backbones (at the size it chose), or before a fit the backbones
        the parameters name at the ``input_size`` they name, so that ``fit(X, features=
        extract(X))`` is ``fit(X)`` for a fixed size."""
        if getattr(self, "backbone_configs_", None) is not None:
            return self.get_backbones()
        bbs = self._sized(self.get_backbones())
        return self._with_pixels(bbs) if self.pixels is True else bbs

    @staticmethod
    def _with_pixels(bbs) -> list:
        """``bbs`` and the raw pixels after them (``pixels=True``), unless they are there."""
        from .backbones import create_backbone

        names = [bb.name for bb in bbs]
        return list(bbs) if "baseline/pixels" in names else [*bbs, create_backbone("baseline/pixels")]

    def _sized(self, bbs) -> list:
        """``bbs`` at ``input_size`` when it is a number (``baseline/*`` keep theirs)."""
        from .features import backbone_at_size, check_input_size

        size = check_input_size(self.input_size)
        return [backbone_at_size(bb, size) for bb in bbs] if isinstance(size, int) else list(bbs)

    def _images_features(self, images):
        """The FeatureResult of images in memory, named ``<image i>``; every one is checked
        before any is computed."""
        from .features import FeatureResult, extract_images
        from .io import check_image_object

        images = _image_list(images)
        names = [f"<image {i}>" for i in range(len(images))]
        for im, name in zip(images, names):
            check_image_object(im, name)
        bbs = self._extract_backbones()
        if not images:
            return FeatureResult(np.zeros((0, sum(bb.feature_dim for bb in bbs)), np.float32), [], [])
        return _joined([FeatureResult(extract_images(bb, images, batch_size=self.batch_size, engine=self._engine(bb),
                                                     names=names), names) for bb in bbs])

    # -- estimator ------------------------------------------------------------------------
    def fit(self, X, y=None, features=None):
        """Fit on image inputs ``X`` (files, directories, list files), or on images in memory
        (PIL images or uint8 arrays, as :meth:`assign_images` takes them; ``paths_`` then
        names them ``<image 0>``, ... and nothing is stored). ``y`` is ignored.

        ``features`` may pass a precomputed :class:`visclust.features.FeatureResult` for
        ``X`` (from a feature store, or :meth:`extract` of a model with the same parameters:
        the same backbones, ``input_size`` and ``pixels=True`` if used) so nothing is computed
        twice; the views are then not compared (``input_size`` and ``pixels`` ``'auto'`` keep
        the backbones at their own size, without pixels).
        """
        memory = features is None and _in_memory(X)
        if memory:
            from .features import typical_short_side
            from .io import check_image_object

            if self.augment:
                raise InputError("augmented copies are made from image files; fit on their paths to use augment")
            images = _image_list(X)
            names = [f"<image {i}>" for i in range(len(images))]
            sizes = [check_image_object(im, name) for im, name in zip(images, names)]  # all, before any work
            self._memory = dict(zip(names, images))
            self._memory_short_side = typical_short_side(sizes, side_of=min)  # of each (width, height)
        try:
            return self._fit(names if memory else X, features)
        finally:
            for attr in ("_memory", "_memory_short_side"):  # the caller's images are not kept
                self.__dict__.pop(attr, None)

    def _fit(self, X, features):
        template = self.clusterer if self.clusterer is not None else FeatureClusterer()
        if not isinstance(template, FeatureClusterer):
            raise InputError("clusterer must be a visclust.FeatureClusterer")
        from .features import check_input_size

        fc = clone(template).set_params(n_clusters=self.n_clusters)
        if not fc.verbose:  # stage lines where the extraction shows its progress bar
            fc.verbose = bool(sys.stderr.isatty() if self.progress is None else self.progress)
        fc._stage_unit = "images"
        k = fc._validate_params()  # before the backbone is built (its weights may be downloaded)
        augment = self.augment
        if isinstance(augment, bool) or not isinstance(augment, (int, np.integer)) or augment < 0:
            raise InputError(f"augment must be a whole number of copies >= 0, got {augment!r}")
        if augment and fc.classifier == "knn":  # refused before any work, not after the clustering
            raise InputError("augmented copies train the network or the SVM, and classifier='knn' asks for the "
                             "vote; use classifier='auto', 'mlp' or 'svm' with augment")
        if self.pixels not in ("auto", True, False):
            raise InputError(f"pixels must be 'auto', True or False, got {self.pixels!r}")
        if self.classifier_views not in ("chosen", "sizes", "all"):
            raise InputError(f"classifier_views must be 'chosen', 'sizes' or 'all', got {self.classifier_views!r}")
        # the backbones the parameters name: not those an earlier fit chose (it may have added pixels)
        self._backbones = None
        self.__dict__.pop("_engines", None)
        for attr in ("backbone_configs_", "backbone_config_"):
            self.__dict__.pop(attr, None)
        bbs = list(self.get_backbones())
        names = [bb.name for bb in bbs]
        size = check_input_size(self.input_size)
        compares = k is not None and k > 1 and "auto" in (fc.method, fc.space)  # the selection gives a score
        use_pixels = self.pixels is not False and "baseline/pixels" not in names
        if use_pixels and self.pixels == "auto":
            use_pixels = compares and features is None  # comparing the views needs the images
        paths = (list(X) if "_memory" in self.__dict__ else collect_inputs(X)) if features is None else None
        if isinstance(size, int):  # every backbone at that size, also when the features are given (extract's)
            bbs = self._sized(bbs)
        # n_clusters='auto' gives no score comparable between the input sizes: their copies alone decide
        copies_only = k is None and "auto" in (fc.method, fc.space)
        alt = self._small_image_view(bbs, paths, self.__dict__.get("_memory_short_side")) \
            if size == "auto" and features is None and (compares or copies_only) else None
        self.view_scores_, self.view_support_, self.view_centrality_, base = {}, {}, {}, "backbone"
        self.view_copies_, self.view_copies_p_ = {}, None
        self.classifier_view_ = None
        view = None
        if alt is not None and copies_only:
            bbs, res, view = self._size_by_copies_alone(fc, bbs, alt, paths, pixels=use_pixels)
            fc.fit(res.features)
        elif alt is not None or (use_pixels and self.pixels == "auto"):
            fc, bbs, res, base = self._fit_views(fc, bbs, alt, use_pixels, paths)
            view = base if self.view_scores_ else None
        else:
            if use_pixels:  # pixels=True: always side by side (extract() before a fit adds them too)
                bbs = self._with_pixels(bbs)
            res = self._features_of(bbs, paths) if features is None else _given_features(features, bbs)
            _check_some(res)
            fc.fit(res.features)
        if augment:
            fc.refit_classifier(res.features, self._copies_features(bbs, list(res.paths), res.features, augment))
        self.feature_clusterer_ = fc
        self.view_ = view
        self._backbones = bbs  # the ones the chosen features came from: predict computes these
        chosen = {bb.config.cache_key() for bb in bbs}  # the other views' engines are not needed again
        self._engines = {k: e for k, e in self.__dict__.get("_engines", {}).items() if k[0] in chosen}
        self.backbone_configs_ = [bb.config for bb in bbs]
        self.backbone_config_ = self.backbone_configs_[0]
        self.paths_ = list(res.paths)
        self.skipped_ = list(res.skipped)
        self.labels_ = fc.labels_
        self.confidence_ = fc.confidence_
        self.n_clusters_ = fc.n_clusters_
        return self

    def assign(self, X, features=None) -> Assignments:
        """Assign every readable image in ``X``; unreadable ones are listed in ``skipped``.

        ``X`` is files, directories and list files, or images in memory (see
        :meth:`assign_images`)."""
        _check_fitted(self, "feature_clusterer_")
        if features is None and _in_memory(X):
            return self.assign_images(X)
        res = features if features is not None else self.extract(X)
        if len(res.paths):
            labels, conf = self.feature_clusterer_.predict_with_confidence(res.features)
        else:
            labels, conf = np.zeros(0, np.int64), np.zeros(0)
        return Assignments(list(res.paths), labels, conf, list(res.skipped))

    def assign_images(self, images) -> Assignments:
        """Assign images already in memory: a PIL image, a numpy uint8 array (h, w), (h, w, 1),
        (h, w, 3) or (h, w, 4), a list of these, or an (n, h, w, c) uint8 array of n images.

        Each is used as a file would be (upright by its EXIF orientation, alpha over white),
        with the model's backbones and input size, in this process (no workers, no store): for
        a few images at a time, e.g. in a service. ``paths`` names them ``<image 0>``,
        ``<image 1>``, ... in the order given; nothing is skipped, and an image that cannot be
        used (a float or channels-first array) raises :class:`~visclust.exceptions.InputError`
        naming it.
        """
        _check_fitted(self, "feature_clusterer_")
        res = self._images_features(images)
        if not res.paths:
            return Assignments([], np.zeros(0, np.int64), np.zeros(0), [])
        labels, conf = self.feature_clusterer_.predict_with_confidence(res.features)
        return Assignments(list(res.paths), labels, conf, [])

    def predict(self, X):
        """Cluster of each readable image in ``X`` (in the order of ``assign(X).paths``)."""
        return self.assign(X).clusters

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def training_assignments(self) -> Assignments:
        _check_fitted(self, "feature_clusterer_")
        return Assignments(self.paths_, self.labels_, self.confidence_, self.skipped_)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model as one safe file (see :mod:`visclust.artifact`)."""
        from .artifact import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, weights: str | None = None) -> "ImageClusterer":
        from .artifact import load_model

        model = load_model(path, weights=weights)
        if not isinstance(model, cls):
            raise InputError(f"{path} holds a {type(model).__name__}, not an {cls.__name__}")
        return model


