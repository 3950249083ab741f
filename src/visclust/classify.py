"""The classifier step: a linear SVM trained on the most confident members of each cluster
(pseudo-labels), refined by self-training, with temperature-scaled confidences; or, when a
label-free test says the clusters are not linearly separable in the reduced space (typically
clusters found in a UMAP embedding), a vote of the nearest training rows.

It is what assigns new images, so the clustering space (which may be UMAP) never needs to
be stored: only ``coef_``, ``intercept_``, ``temperature_`` and, for the vote, a reference
sample of reduced training rows with their clusters.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .exceptions import InputError


def fit_temperature(dec: np.ndarray, truth: np.ndarray) -> float:
    """The temperature ``T`` (``log T`` searched in [-3, 5]) that minimises the mean log-loss
    ``-log(softmax(T * dec)[truth] + 1e-12)`` of the rows of ``dec`` (one row of decision
    values per sample) against the class indices ``truth``. Computed in float64 a
    cache-sized block of rows at a time: no copy of ``dec`` is made."""
    import torch
    from scipy.optimize import minimize_scalar

    from .cluster import block_rows

    if len(dec) == 0:
        return 1.0
    D = torch.from_numpy(np.ascontiguousarray(dec))
    y = torch.from_numpy(np.asarray(truth, np.int64))
    step = block_rows(D.shape[1], itemsize=8)
    buf = torch.empty((min(step, len(D)), D.shape[1]), dtype=torch.float64)
    floor = torch.tensor(math.log(1e-12), dtype=torch.float64)

    def nll(log_t):
        t, total = math.exp(log_t), 0.0
        for s in range(0, len(D), step):
            z = buf[:len(D[s:s + step])].copy_(D[s:s + step]).mul_(t)
            neg_log_p = torch.logsumexp(z, 1).sub_(z[torch.arange(len(z)), y[s:s + len(z)]])
            total += float(torch.logaddexp(-neg_log_p, floor).sum())  # log(p + 1e-12)
        return -total / len(D)

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 5), method="bounded").x))


def confident_members(scores: np.ndarray, labels: np.ndarray, fraction: float, min_per_cluster: int = 5) -> np.ndarray:
    """Indices of the ``fraction`` highest-scoring members of every cluster (at least a few)."""
    keep = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        n = max(min(min_per_cluster, len(members)), int(np.ceil(fraction * len(members))))
        keep.append(members[np.argsort(-scores[members], kind="stable")[:n]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


#: Added to the vote of the class of each row's nearest reference row, so that a tie between
#: classes goes to the nearest neighbour's class instead of the lower class number; less than
#: one vote, so it never overturns a majority. (With 2 voters, an image in a cluster of its own
#: and one other, the tie used to give its image to the other cluster.)
NEAREST_TIE_BREAK = 1e-3


def neighbour_votes(Z: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, n_classes: int,
                    n_neighbors: int) -> np.ndarray:
    """How many of the ``n_neighbors`` nearest reference rows (Euclidean) of each row of
    ``Z`` belong to each class, plus :data:`NEAREST_TIE_BREAK` for the nearest one's class:
    ``(len(Z), n_classes)`` float32. The distances are computed a cache-sized block of rows at
    a time (:func:`visclust.cluster.block_rows`)."""
    import torch

    from .cluster import block_rows

    Z = np.asarray(Z, np.float32)
    k = int(min(n_neighbors, len(reference)))
    out = np.zeros((len(Z), n_classes), np.float32)
    if k == 0 or len(Z) == 0:
        return out
    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    ref_sq = (ref * ref).sum(1)
    lab = torch.from_numpy(np.asarray(reference_labels, np.int64))
    step = block_rows(len(ref))
    buf = torch.empty((min(step, len(Z)), len(ref)))
    out_t = torch.from_numpy(out)
    for s in range(0, len(Z), step):
        z = torch.from_numpy(np.ascontiguousarray(Z[s:s + step]))
        d = torch.addmm(ref_sq, z, ref.T, alpha=-2, out=buf[:len(z)])  # + |z|^2, the same for every reference row
        near = torch.topk(d, k, dim=1, largest=False, sorted=False)
        nn = near.indices
        row = torch.arange(len(z))
        cell = (row[:, None] * n_classes + lab[nn]).flatten()  # (row, class) of each neighbour
        block = out_t[s:s + len(z)]
        block.view(-1).index_add_(0, cell, torch.ones(len(cell)))
        block[row, lab[nn[row, near.values.argmin(1)]]] += NEAREST_TIE_BREAK
    return out


def vote_size(n_neighbors: int, n_reference: int, n_classes: int) -> int:
    """How many neighbours vote: ``n_neighbors``, but no more than the reference holds per
    cluster on average. On a few images (8 photos in 3 clusters) 15 neighbours are every
    reference row, and the largest cluster would win every vote."""
    return int(max(1, min(int(n_neighbors), n_reference // max(int(n_classes), 1))))


def vote_scores(votes: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Log of the smoothed vote shares: the kNN counterpart of SVM decision values."""
    k = votes.shape[1]
    return np.log((votes + 0.5) / (n_neighbors + 0.5 * k))


#: From this many clusters on, the SVM is trained by :func:`ovr_squared_hinge` (all classes at
#: once, by matrix products) instead of liblinear, which solves one problem per class in turn.
#: Measured on CIFAR-10 train's MobileNetV2 features in PCA-64, K-means pseudo-labels
#: (``benchmarks/svm_solvers.py``, docs/scaling.md): 33,000 rows, K = 30 / 40 / 100: 6.6 /
#: 8.8 / 23.2 s -> 0.46 / 0.50 / 0.97 s, held-out agreement within 0.003; at K = 10 liblinear
#: agrees more (0.954 vs 0.937) and takes 2.4 s, so small K keeps it.
TORCH_SVM_MIN_CLASSES = 30


def ovr_squared_hinge(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = 1.0,
                      max_iter: int = 300, init: tuple[np.ndarray, np.ndarray] | None = None,
                      chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest linear SVMs with liblinear's primal objective (squared hinge, bias as a
    regularised extra feature, ``class_weight='balanced'``), all classes solved together by
    L-BFGS on matrix products.

    Each evaluation costs ``O(n_samples * n_features * n_classes)`` flops: linear in the
    number of samples, no kernel matrix. Loss and gradient are computed by hand, ``chunk``
    rows at a time (default :func:`visclust.cluster.block_rows`: about 4 MB) into one reused
    buffer, so memory beyond the data is one ``(chunk, n_classes)`` matrix (autograd over
    the whole ``(n_samples, n_classes)`` matrix spent more time in page faults than in
    arithmetic: 171 s vs 49 s for one fit at 50,000 x 256, K = 1,000; blocks of 8,192 rows
    took 136 ms per evaluation at 50,000 x 64, K = 1,000, blocks of 1,024 97 ms). ``init``
    (coef, intercept) warm-starts the solver; the objective is strictly convex, so it
    changes how fast, not where, it converges.

    Returns ``coef (n_classes, n_features)`` and ``intercept (n_classes,)`` as float32.
    """
    import torch

    from .cluster import block_rows

    n, d = X.shape
    chunk = block_rows(n_classes) if chunk is None else int(chunk)
    Xa = torch.from_numpy(np.hstack([np.asarray(X, np.float32), np.ones((n, 1), np.float32)]))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    # sqrt of the balanced class weight of each row: slack * sqrt(w) squared is the weighted loss
    root_w = torch.from_numpy(np.sqrt(n / (n_classes * np.maximum(counts, 1)))[y].astype(np.float32))[:, None]
    W = torch.zeros(n_classes, d + 1)
    if init is not None:
        W[:, :d] = torch.from_numpy(np.asarray(init[0], np.float32))
        W[:, d] = torch.from_numpy(np.asarray(init[1], np.float32))
    W.requires_grad_(True)
    buf = torch.empty(min(chunk, n), n_classes)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        # liblinear's 0.5 |w|^2 + C sum_i c_i max(0, 1 - s_i w.x_i)^2 for every class, / (C n),
        # with s_i = +1 for the row's own class and -1 for the others
        with torch.no_grad():
            grad = W / (C * n)
            loss = 0.5 * float((W * W).sum()) / (C * n)
            for start in range(0, n, chunk):
                xa = Xa[start:start + chunk]
                rows, own = torch.arange(len(xa)), yt[start:start + chunk]
                m = torch.mm(xa, W.T, out=buf[:len(xa)])  # margins w.x
                m[rows, own] *= -1  # -s * w.x
                m.add_(1).clamp_(min=0).mul_(root_w[start:start + chunk])  # sqrt(c) * slack
                loss += float(torch.linalg.vector_norm(m)) ** 2 / n
                m.mul_(root_w[start:start + chunk]).mul_(2.0 / n)  # d loss / d(-s * w.x)
                m[rows, own] *= -1  # d loss / d(w.x) = -s * that
                grad.addmm_(m.T, xa)
        W.grad = grad
        return torch.tensor(loss)

    opt.step(closure)
    Wn = W.detach().numpy()
    return Wn[:, :d].astype(np.float32), Wn[:, d].astype(np.float32)


#: Out-of-fold checks hold out a third of the rows at a time, all three thirds in turn; once
#: a single third has this many rows, that third alone is enough (its agreement is a mean
#: over at least this many rows) and the other two fits are skipped.
HOLDOUT_ROWS = 20000


def holdout_folds(n: int, random_state) -> tuple[np.ndarray, list[int]]:
    """Fold of each of ``n`` rows (0, 1 or 2) and the folds to hold out in turn."""
    fold = np.random.default_rng(random_state).integers(0, 3, n)
    return fold, [0] if n // 3 >= HOLDOUT_ROWS else [0, 1, 2]


def centroid_margin(X: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """How clearly each point belongs to its cluster: distance to the nearest other centre
    minus distance to its own (larger is surer). A label of -1 counts as cluster 0.
    Computed a cache-sized block of rows at a time, in float64 when ``X`` is float64."""
    import torch

    from .cluster import block_rows

    dtype = np.float64 if np.asarray(X).dtype == np.float64 else np.float32
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype))
    C = torch.from_numpy(np.ascontiguousarray(centers, dtype))
    c_sq = (C * C).sum(1)
    own = torch.from_numpy(np.maximum(np.asarray(labels), 0).astype(np.int64))
    out = torch.empty(len(Xt), dtype=Xt.dtype)
    step = block_rows(len(C), itemsize=Xt.element_size())
    buf = torch.empty((min(step, len(Xt)), len(C)), dtype=Xt.dtype)
    for s in range(0, len(Xt), step):
        x = Xt[s:s + step]
        d = torch.addmm(c_sq, x, C.T, alpha=-2, out=buf[:len(x)]).add_((x * x).sum(1, keepdim=True))
        d.clamp_min_(0).sqrt_()
        rows, col = torch.arange(len(x)), own[s:s + len(x)]
        mine = d[rows, col]
        d[rows, col] = float("inf")
        out[s:s + len(x)] = d.min(1).values - mine
    return out.numpy()


#: The network that learns from augmented copies: one hidden layer of this many ReLU units,
#: trained this many epochs with Adam (learning rate 1e-3, weight decay 1e-4, batches of 256),
#: fewer when that would take more than ``MLP_MAX_STEPS`` batches (large collections: the
#: training time stops growing with the number of rows; at least one epoch).
MLP_HIDDEN, MLP_EPOCHS, MLP_MAX_STEPS = 512, 30, 20000
#: A copy trains the network only if it looks like an image of the collection: its distance
#: to its ``PLAUSIBLE_NEIGHBOURS``-th nearest original (its own original left out) is at most
#: the ``PLAUSIBLE_QUANTILE`` quantile of the same distance among the originals.
PLAUSIBLE_NEIGHBOURS, PLAUSIBLE_QUANTILE = 10, 0.9


def plausible_copies(X: np.ndarray, views, max_reference: int = 20000, random_state=0) -> list[np.ndarray]:
    """For each array of ``views`` (features of one augmented copy of every row of ``X``), a
    boolean mask of the copies that look like the collection (label-free).

    A crop of a photo is still a photo of the collection; a mirrored or cropped digit, or a
    part of a centred garment, is unlike any image in it, and a classifier taught that it
    belongs with its original learns an invariance the collection does not have. Distances
    are measured to a random reference sample of at most ``max_reference`` originals."""
    import torch

    from .cluster import block_rows

    X = np.asarray(X, np.float32)
    k = PLAUSIBLE_NEIGHBOURS
    ref = np.arange(len(X))
    if len(ref) > max_reference:
        ref = np.sort(np.random.default_rng(random_state).choice(len(X), int(max_reference), replace=False))
    if len(ref) <= k + 1:
        return [np.ones(len(X), bool) for _ in views]
    pos = np.full(len(X), -1, np.int64)
    pos[ref] = np.arange(len(ref))
    R = torch.from_numpy(np.ascontiguousarray(X[ref]))
    r_sq = (R * R).sum(1)

    def kth(A):  # distance to the k-th nearest reference row other than the row's own original
        out = np.empty(len(A), np.float32)
        step = block_rows(len(ref))
        for s in range(0, len(A), step):
            a = torch.from_numpy(np.ascontiguousarray(A[s:s + step], np.float32))
            d = torch.addmm(r_sq, a, R.T, alpha=-2).add_((a * a).sum(1, keepdim=True)).clamp_min_(0)
            own = torch.from_numpy(pos[s:s + len(a)])
            mine = own >= 0
            d[torch.arange(len(a))[mine], own[mine]] = float("inf")
            # the k-th smallest is the largest of the k smallest: topk is 8x faster than kthvalue here
            out[s:s + len(a)] = torch.topk(d, k, dim=1, largest=False, sorted=False).values.amax(1).sqrt_().numpy()
        return out

    limit = np.quantile(kth(X), PLAUSIBLE_QUANTILE)
    return [kth(v) <= limit for v in views]


#: What each rule is called where people read it (the ``classifier:`` line, the report).
RULE_NAMES = {"svm": "linear SVM", "knn": "vote of the nearest training images", "mlp": "network"}
_SHORT_NAMES = {"svm": "SVM", "knn": "vote", "mlp": "network"}


def describe_classifier(clf) -> str | None:
    """One line on what assigns the images, e.g. ``classifier: network (85% of the augmented
    copies kept; held-out agreement with the clustering network 0.869)``; None when ``clf``
    is not a fitted :class:`PseudoLabelClassifier`."""
    kind = getattr(clf, "kind_", None)
    if kind not in RULE_NAMES:
        return None
    parts = []
    kept = getattr(clf, "copies_kept_", None)
    if kind == "mlp" and kept is not None:
        parts.append(f"{kept:.0%} of the augmented copies kept")
    agree = getattr(clf, "agreement_", None) or {}
    if agree:
        parts.append("held-out agreement with the clustering "
                     + ", ".join(f"{_SHORT_NAMES.get(k, k)} {v:.3f}" for k, v in sorted(agree.items(), key=lambda t: -t[1])))
    return f"classifier: {RULE_NAMES[kind]}" + (f" ({'; '.join(parts)})" if parts else "")


class PseudoLabelClassifier(ClassifierMixin, BaseEstimator):
    """Linear SVM on cluster pseudo-labels, with self-training and calibrated confidences.

    Parameters
    ----------
    confident_fraction : float, default 0.5
        Share of each cluster (its members nearest the centre) used as training examples.
    self_training : int, default 2
        Rounds of re-labelling all points with the SVM and retraining on its most confident
        predictions.
    C : float, default 1.0
        SVM regularisation.
    kind : {'auto', 'svm', 'knn', 'mlp'}, default 'auto'
        ``'svm'``: the linear SVM. ``'mlp'``: a small network (one hidden layer) trained on
        every member, meant for augmented copies (``views`` in :meth:`fit`): with copies,
        ``'auto'`` is ``'mlp'``. ``'knn'``: a vote of the ``n_neighbors`` nearest rows of
        a reference sample (at most ``max_reference`` rows, drawn evenly from each cluster)
        of the training rows with their cluster labels. ``'auto'``: both are scored on
        held-out rows (3 folds; one held-out third once it has ``HOLDOUT_ROWS`` rows) by how often they give back the cluster they are trained to
        reproduce; the vote is used only when it agrees more by at least 0.01. This needs
        no labels: it asks which rule reproduces the user's clustering on rows it has not
        seen, and so which one will assign new images the way the clustering would have.
    n_neighbors : int, default 15
    max_reference : int, default 20000
    random_state : int, default 0

    Attributes
    ----------
    coef_ : ndarray (n_classes, n_features)
    intercept_ : ndarray (n_classes,)
    temperature_ : float
        Decision values are multiplied by this before the softmax; fitted by minimising the
        log-loss of out-of-fold predictions against the cluster labels.
    classes_ : ndarray (n_classes,)
    kind_ : {'svm', 'knn', 'mlp'}
        The rule that assigns rows.
    hidden_coef_, hidden_intercept_ : ndarray
        The network's hidden layer (``'mlp'`` only; ``coef_`` and ``intercept_`` are then its
        output layer).
    n_iter_ : int
        Epochs the final network was trained for (``'mlp'`` only).
    agreement_ : dict {str: float}
        Out-of-fold agreement of each rule tried with the cluster labels.
    copies_kept_ : float or None
        Share of the augmented copies that trained the network (``'mlp'`` with ``views``
        only; None otherwise). Saved in the model file with ``agreement_``.
    reference_, reference_labels_ : ndarray
        The vote's reference rows and their class indices (empty for the SVM).
    """

    def __init__(self, confident_fraction: float = 0.5, self_training: int = 2, C: float = 1.0,
                 kind: str = "auto", n_neighbors: int = 15, max_reference: int = 20000,
                 random_state: int | None = 0):
        self.confident_fraction = confident_fraction
        self.self_training = self_training
        self.C = C
        self.kind = kind
        self.n_neighbors = n_neighbors
        self.max_reference = max_reference
        self.random_state = random_state

    def fit(self, X, y, sample_score=None, views=None):
        """Fit on features ``X`` and cluster labels ``y`` (-1 = noise, not used).

        ``sample_score`` ranks members within a cluster (higher = more typical); by default
        the margin between the nearest other cluster mean and the own cluster mean.
        ``views`` (optional): arrays shaped like ``X``, the features of augmented copies of
        its rows (:mod:`visclust.augment`). With ``kind='auto'`` or ``'mlp'`` the network
        trains on every member and its copies that look like the collection
        (:func:`plausible_copies`), with the member's label; with ``kind='svm'`` the SVM trains
        on each confident member's copies, all of them. Self-training relabels a row by its
        decision values averaged over the row and its (kept) copies. New rows are still
        assigned from their own features only, and the temperature is fitted for that.
        """
        if not 0 < self.confident_fraction <= 1:
            raise InputError(f"confident_fraction must be in (0, 1], got {self.confident_fraction}")
        if self.kind not in ("auto", "svm", "knn", "mlp"):
            raise InputError(f"unknown classifier kind {self.kind!r}; choose auto, svm, knn or mlp")
        if int(self.n_neighbors) < 1 or int(self.max_reference) < 1:
            raise InputError("n_neighbors and max_reference must be positive integers")
        self.kind_, self.agreement_, self.copies_kept_ = "svm", {}, None
        self.reference_ = np.zeros((0, np.shape(X)[1]), np.float32)
        self.reference_labels_ = np.zeros(0, np.int64)
        X = np.asarray(X, np.float32)
        y = np.asarray(y, np.int64)
        views = [np.asarray(v, np.float32) for v in (views or [])]
        if any(v.shape != X.shape for v in views):
            raise InputError(f"every view must have the shape of X {X.shape}, got {[v.shape for v in views]}")
        if views and self.kind == "knn":
            raise InputError("augmented copies train the SVM or the network, and kind='knn' asks for the vote; "
                             "use kind='auto', 'mlp' or 'svm' with them")
        self.classes_ = np.unique(y[y >= 0])
        self.n_features_in_ = X.shape[1]
        k = len(self.classes_)
        if k < 2:
            self.coef_ = np.zeros((max(k, 1), X.shape[1]), np.float32)
            self.intercept_ = np.zeros(max(k, 1), np.float32)
            self.temperature_ = 1.0
            if k == 0:
                self.classes_ = np.array([0])
            return self
        if self.kind == "mlp" or (self.kind == "auto" and views):  # every member trains it: no ranking needed
            self.kind_ = "mlp"
            keep = plausible_copies(X, views, self.max_reference, self.random_state) if views else []
            self._self_train_mlp(X, y, views, keep)
            self.temperature_ = self._fit_mlp_temperature(X, views, keep)
            return self
        if sample_score is None:
            from .cluster import cluster_means

            yi = np.full(len(y), -1, np.int64)
            yi[y >= 0] = np.searchsorted(self.classes_, y[y >= 0])
            sample_score = centroid_margin(X, yi, cluster_means(X, yi, k))
        if self.kind != "knn":
            self._self_train(X, y, np.asarray(sample_score), views=views)
            self.temperature_ = self._fit_temperature(X, y, np.asarray(sample_score), views)
        else:  # no SVM: its arrays stay neutral and unused
            self.coef_ = np.zeros((k, X.shape[1]), np.float32)
            self.intercept_ = np.zeros(k, np.float32)
            self.temperature_ = 1.0
        if self.kind != "svm":
            self._fit_vote(X, y)
        return self

    def _reference(self, X, yi, rows) -> tuple[np.ndarray, np.ndarray]:
        """At most ``max_reference`` of ``rows``, the same share of every cluster."""
        rows = rows[yi[rows] >= 0]
        if len(rows) > self.max_reference:
            rng = np.random.default_rng(self.random_state)
            rows = np.sort(rng.choice(rows, int(self.max_reference), replace=False))
        return X[rows], yi[rows]

    def _fit_vote(self, X, y):
        """Out-of-fold agreement and temperature of the nearest-neighbour vote; keep it when
        ``kind='knn'``, or when it reproduces the clusters better than the SVM did."""
        k = len(self.classes_)
        yi = np.full(len(y), -1, np.int64)
        yi[y >= 0] = np.searchsorted(self.classes_, y[y >= 0])
        from .cluster import block_rows

        ok = np.flatnonzero(yi >= 0)
        fold, held_out = holdout_folds(len(ok), self.random_state)
        scored = np.flatnonzero(np.isin(fold, held_out))
        dec = np.empty((len(scored), k), np.float32)  # the held-out rows only, in the order of `scored`
        step = block_rows(k)
        for f in held_out:
            ref, ref_y = self._reference(X, yi, ok[fold != f])
            if len(ref) == 0:
                return
            rows = np.flatnonzero(fold == f)
            pos = np.searchsorted(scored, rows)
            nn = vote_size(self.n_neighbors, len(ref), k)
            for s in range(0, len(rows), step):
                votes = neighbour_votes(X[ok[rows[s:s + step]]], ref, ref_y, k, nn)
                dec[pos[s:s + step]] = vote_scores(votes, nn)
        truth = yi[ok][scored]
        self.agreement_["knn"] = float(np.mean(dec.argmax(1) == truth))
        if self.kind == "auto" and self.agreement_["knn"] < self.agreement_.get("svm", 0.0) + 0.01:
            return
        self.temperature_ = fit_temperature(dec, truth)
        self.kind_ = "knn"
        self.reference_, self.reference_labels_ = self._reference(X, yi, ok)

    def _self_train(self, X, y, sample_score, warm: bool = False, views=()):
        """SVM on the confident members, then ``self_training`` rounds of relabelling all
        rows with it and retraining on its most confident predictions. Each round (and the
        first one too when ``warm``) starts the batched solver from the current weights.
        With ``views``, each member's copies train with it and relabelling averages over them."""
        labels = y
        train = confident_members(sample_score, labels, self.confident_fraction)
        for round_ in range(self.self_training + 1):
            if (round_ > 0 or warm) and len(np.unique(labels[train])) < 2:
                # The SVM put every row in one cluster (rows it cannot tell apart, e.g. all
                # alike), or a fold holds one cluster only: nothing to learn; keep the SVM so far.
                break
            rows = np.concatenate([X[train]] + [v[train] for v in views]) if views else X[train]
            self._fit_svm(rows, np.tile(labels[train], 1 + len(views)), warm=warm or round_ > 0)
            best, margin = self._best_and_margin(X, views)
            labels = self.classes_[best]
            train = confident_members(margin, labels, self.confident_fraction)

    def _self_train_mlp(self, X, y, views, keep):
        """The network on every member and its kept copies, then ``self_training`` rounds of
        relabelling every row (mean over the row and its kept copies) and training again."""
        labels = np.asarray(y)
        self.copies_keep_ = keep  # which copies trained the network (the fit's rows only; not saved)
        self.copies_kept_ = float(np.mean([m.mean() for m in keep])) if keep else None
        kept = [np.where(m[:, None], v, X) for v, m in zip(views, keep)]  # a dropped copy counts as its original
        for round_ in range(self.self_training + 1):
            ok = labels >= 0
            rows = np.concatenate([X[ok]] + [v[ok & m] for v, m in zip(views, keep)])
            target = np.concatenate([labels[ok]] + [labels[ok & m] for m in keep])
            self._fit_mlp(rows, np.searchsorted(self.classes_, target), seed=round_)
            best, _ = self._best_and_margin(X, kept)
            labels = self.classes_[best]
        self.train_labels_ = labels  # what the fit's rows were last relabelled to (with their copies)

    def _fit_mlp(self, X, yi, seed: int = 0):
        """Train the one-hidden-layer network on rows ``X`` with class indices ``yi``."""
        import torch

        gen = torch.Generator().manual_seed(int(self.random_state or 0) * 1000 + int(seed))
        d, k = X.shape[1], len(self.classes_)
        W1 = torch.empty(MLP_HIDDEN, d)
        W2 = torch.empty(k, MLP_HIDDEN)
        for W in (W1, W2):  # PyTorch's default initialisation for a linear layer, from our generator
            bound = 1 / math.sqrt(W.shape[1])
            W.uniform_(-bound, bound, generator=gen)
        b1 = torch.empty(MLP_HIDDEN).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d), generator=gen)
        b2 = torch.empty(k).uniform_(-1 / math.sqrt(MLP_HIDDEN), 1 / math.sqrt(MLP_HIDDEN), generator=gen)
        params = [p.requires_grad_() for p in (W1, b1, W2, b2)]
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
        Xt, Yt = torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(np.asarray(yi, np.int64))
        self.n_iter_ = max(1, min(MLP_EPOCHS, MLP_MAX_STEPS // max(1, math.ceil(len(Xt) / 256))))  # epochs
        for _ in range(self.n_iter_):
            order = torch.randperm(len(Xt), generator=gen)
            for s in range(0, len(Xt), 256):
                b = order[s:s + 256]
                logits = torch.relu(Xt[b] @ W1.T + b1) @ W2.T + b2
                loss = torch.nn.functional.cross_entropy(logits, Yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.hidden_coef_, self.hidden_intercept_ = W1.detach().numpy().copy(), b1.detach().numpy().copy()
        self.coef_, self.intercept_ = W2.detach().numpy().copy(), b2.detach().numpy().copy()

    def _fit_mlp_temperature(self, X, views, keep) -> float:
        """Temperature from out-of-fold decision values against the final labels: a network
        trained as the last round was (every row with its label and its kept copies) on two
        thirds of the rows predicts the held-out third from the rows' own features."""
        labels = self.train_labels_
        if len(X) < 30:
            return 1.0
        final = tuple(a.copy() for a in (self.hidden_coef_, self.hidden_intercept_, self.coef_, self.intercept_))
        epochs = self.n_iter_
        fold, held_out = holdout_folds(len(X), self.random_state)
        scored = np.flatnonzero(np.isin(fold, held_out))
        dec = np.empty((len(scored), len(self.classes_)), np.float32)
        for f in held_out:
            tr = fold != f
            rows = np.concatenate([X[tr]] + [v[tr & m] for v, m in zip(views, keep)])
            target = np.concatenate([labels[tr]] + [labels[tr & m] for m in keep])
            self._fit_mlp(rows, np.searchsorted(self.classes_, target), seed=100 + f)
            held = np.flatnonzero(~tr)
            pos = np.searchsorted(scored, held)
            for s, d in self._decision_blocks(X[held]):
                dec[pos[s:s + len(d)]] = d.numpy()
        self.hidden_coef_, self.hidden_intercept_, self.coef_, self.intercept_ = final
        self.n_iter_ = epochs
        truth = np.searchsorted(self.classes_, labels[scored])
        self.agreement_["mlp"] = float(np.mean(dec.argmax(1) == truth))
        return fit_temperature(dec, truth)

    def _fit_svm(self, X, y, warm: bool = False):
        present = list(np.unique(y))
        if len(present) >= TORCH_SVM_MIN_CLASSES:
            init = None
            if warm and getattr(self, "coef_", np.zeros((0, 0))).shape == (len(self.classes_), X.shape[1]):
                rows = np.searchsorted(self.classes_, present)
                # a class that had no examples last time (intercept -1e3) starts from zero
                unseen = self.intercept_[rows] <= -1e3
                init = (np.where(unseen[:, None], 0, self.coef_[rows]), np.where(unseen, 0, self.intercept_[rows]))
            coef, intercept = ovr_squared_hinge(X, np.searchsorted(present, y), len(present), self.C, init=init)
        else:
            from sklearn.svm import LinearSVC

            svm = LinearSVC(C=self.C, class_weight="balanced", random_state=self.random_state, max_iter=2000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on near-separable data is harmless
                svm.fit(X, y)
            coef, intercept = svm.coef_, svm.intercept_
        full_coef = np.zeros((len(self.classes_), X.shape[1]), np.float32)
        full_int = np.full(len(self.classes_), -1e3, np.float32)  # a class with no examples is never chosen
        if len(present) == 2 and coef.shape[0] == 1:
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-intercept[0], intercept[0]])
        for row, c in enumerate(present):
            j = int(np.searchsorted(self.classes_, c))
            full_coef[j], full_int[j] = coef[row], intercept[row]
        self.coef_, self.intercept_ = full_coef, full_int

    def _fit_temperature(self, X, y, score, views=()) -> float:
        """Temperature from out-of-fold decision values against the cluster labels (three
        folds, or one held-out third for large inputs: :func:`holdout_folds`).

        Each fold's SVM is trained exactly as the final one is (confident members, then
        self-training) on two thirds of the rows, so its decision values have the final
        model's scale; the temperature that best predicts the held-out rows' clusters is kept.
        """
        ok = y >= 0
        Xo, yo, so = X[ok], np.searchsorted(self.classes_, y[ok]), score[ok]
        vo = [v[ok] for v in views]
        if len(Xo) < 30:
            return 1.0
        fold, held_out = holdout_folds(len(Xo), self.random_state)
        scored = np.flatnonzero(np.isin(fold, held_out))
        dec = np.empty((len(scored), len(self.classes_)), np.float32)  # held-out rows, in the order of `scored`
        keep = (self.coef_.copy(), self.intercept_.copy())
        for f in held_out:
            tr = fold != f
            # warm start from the full model: the same convex problems, reached sooner
            self.coef_, self.intercept_ = keep[0].copy(), keep[1].copy()
            self._self_train(Xo[tr], self.classes_[yo[tr]], so[tr], warm=True, views=[v[tr] for v in vo])
            rows = np.flatnonzero(~tr)
            pos = np.searchsorted(scored, rows)
            for s, d in self._decision_blocks(Xo[rows]):
                dec[pos[s:s + len(d)]] = d.numpy()
        self.coef_, self.intercept_ = keep
        truth = yo[scored]
        self.agreement_["svm"] = float(np.mean(dec.argmax(1) == truth))
        return fit_temperature(dec, truth)

    def _decision_blocks(self, X):
        """Yield ``(start, decision values)`` for consecutive blocks of rows of ``X``: float32
        tensors of :func:`visclust.cluster.block_rows` rows, so no ``(n_samples, n_classes)``
        temporary is made. A block's tensor is overwritten by the next one."""
        import torch

        from .cluster import block_rows

        X = np.asarray(X, np.float32)
        k = len(self.classes_)
        step = block_rows(k)
        if getattr(self, "kind_", "svm") == "knn":
            nn = vote_size(self.n_neighbors, len(self.reference_), k)
            for s in range(0, len(X), step):
                votes = neighbour_votes(X[s:s + step], self.reference_, self.reference_labels_, k, nn)
                yield s, torch.from_numpy(vote_scores(votes, nn).astype(np.float32, copy=False))
            return
        W = torch.from_numpy(np.ascontiguousarray(self.coef_, np.float32))
        b = torch.from_numpy(np.ascontiguousarray(self.intercept_, np.float32))
        buf = torch.empty((min(step, len(X)), k))
        hidden = None
        if getattr(self, "kind_", "svm") == "mlp":
            hidden = (torch.from_numpy(np.ascontiguousarray(self.hidden_coef_, np.float32)),
                      torch.from_numpy(np.ascontiguousarray(self.hidden_intercept_, np.float32)))
        for s in range(0, len(X), step):
            x = torch.from_numpy(np.ascontiguousarray(X[s:s + step]))
            if hidden is not None:
                x = torch.addmm(hidden[1], x, hidden[0].T).relu_()
            yield s, torch.addmm(b, x, W.T, out=buf[:len(x)])

    def _mean_decision_blocks(self, X, views=None):
        """:meth:`_decision_blocks` of ``X``, each block averaged with the same rows of ``views``."""
        if not views:
            yield from self._decision_blocks(X)
            return
        from .cluster import block_rows

        X, views = np.asarray(X, np.float32), [np.asarray(v, np.float32) for v in views]
        step = block_rows(len(self.classes_))
        for s in range(0, len(X), step):
            d = sum(next(self._decision_blocks(a[s:s + step]))[1].clone() for a in [X, *views])
            yield s, d.div_(1 + len(views))

    def _best_and_margin(self, X, views=None) -> tuple[np.ndarray, np.ndarray]:
        """Per row: index into ``classes_`` of the largest decision value (the first on a tie;
        averaged over ``views`` too when given), and how far it is above the second largest."""
        import torch

        best, margin = np.empty(len(X), np.int64), np.empty(len(X), np.float32)
        for s, d in self._mean_decision_blocks(X, views):
            top = torch.topk(d, 2, dim=1).values
            best[s:s + len(d)] = d.argmax(1).numpy()
            margin[s:s + len(d)] = top[:, 0].sub_(top[:, 1]).numpy()
        return best, margin

    def decision_function(self, X) -> np.ndarray:
        """SVM decision values, or for the vote the log of the smoothed vote shares."""
        check_is_fitted(self, "coef_")
        out = np.empty((len(X), len(self.classes_)), np.float32)
        for s, d in self._decision_blocks(X):
            out[s:s + len(d)] = d.numpy()
        return out

    def predict_proba(self, X, views=None) -> np.ndarray:
        """``softmax(temperature_ * decision values)`` in float64, a block of rows at a time;
        with ``views`` (features of augmented copies of the rows) the decision values are
        averaged over each row and its copies first."""
        import torch

        check_is_fitted(self, "coef_")
        out = np.empty((len(X), len(self.classes_)), np.float64)
        for s, d in self._mean_decision_blocks(X, views):
            p = torch.from_numpy(out[s:s + len(d)]).copy_(d).mul_(self.temperature_)
            p.sub_(p.max(1, keepdim=True).values).exp_()
            p.div_(p.sum(1, keepdim=True))
        return out

    def predict_with_confidence(self, X, views=None) -> tuple[np.ndarray, np.ndarray]:
        """Index into ``classes_`` of each row's most probable class (the first on a tie) and
        its probability: ``predict_proba(X, views).argmax(1)`` and ``.max(1)``, without the matrix."""
        check_is_fitted(self, "coef_")
        best, conf = np.empty(len(X), np.int64), np.empty(len(X), np.float64)
        for s, d in self._mean_decision_blocks(X, views):
            z = d.double().mul_(self.temperature_)
            top, arg = z.max(1, keepdim=True)
            best[s:s + len(d)] = arg[:, 0].numpy()
            conf[s:s + len(d)] = z.sub_(top).exp_().sum(1).reciprocal_().numpy()  # exp(0) / sum
        return best, conf

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        best = np.empty(len(X), np.int64)
        for s, d in self._decision_blocks(X):
            best[s:s + len(d)] = d.argmax(1).numpy()
        return self.classes_[best]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"coef": self.coef_, "intercept": self.intercept_, "classes": self.classes_.astype(np.int64),
                  "temperature": np.array([self.temperature_], np.float64)}
        if getattr(self, "kind_", "svm") == "knn":
            arrays.update(reference=self.reference_.astype(np.float32),
                          reference_labels=self.reference_labels_.astype(np.int64))
        elif getattr(self, "kind_", "svm") == "mlp":
            arrays.update(hidden_coef=self.hidden_coef_.astype(np.float32),
                          hidden_intercept=self.hidden_intercept_.astype(np.float32))
        return arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> "PseudoLabelClassifier":
        c = cls(**params)
        c.coef_ = arrays["coef"].astype(np.float32)
        c.intercept_ = arrays["intercept"].astype(np.float32)
        c.classes_ = arrays["classes"].astype(np.int64)
        c.temperature_ = float(arrays["temperature"][0])
        c.n_features_in_ = c.coef_.shape[1]
        c.agreement_, c.copies_kept_ = {}, None  # the fit's record, restored by the model file's reader
        if "hidden_coef" in arrays:
            c.kind_ = "mlp"
            c.hidden_coef_ = arrays["hidden_coef"].astype(np.float32)
            c.hidden_intercept_ = arrays["hidden_intercept"].astype(np.float32)
            c.n_features_in_ = c.hidden_coef_.shape[1]
            c.reference_ = np.zeros((0, c.n_features_in_), np.float32)
            c.reference_labels_ = np.zeros(0, np.int64)
        elif "reference" in arrays:
            c.kind_ = "knn"
            c.reference_ = arrays["reference"].astype(np.float32)
            c.reference_labels_ = arrays["reference_labels"].astype(np.int64)
        else:
            c.kind_ = "svm"
            c.reference_ = np.zeros((0, c.n_features_in_), np.float32)
            c.reference_labels_ = np.zeros(0, np.int64)
        return c
