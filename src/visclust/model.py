"""The estimators users fit: :class:`FeatureClusterer` on a feature matrix and
:class:`ImageClusterer` on image files (backbone + FeatureClusterer).

Both follow scikit-learn's contract: ``__init__`` stores its arguments, ``fit`` returns
``self``, learned state ends in ``_``, ``predict`` checks that the model is fitted.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted as _sk_check_is_fitted
from sklearn.exceptions import NotFittedError as _SkNotFittedError

from .classify import PseudoLabelClassifier, centroid_margin
from .cluster import METHODS, check_method, cluster_features, cluster_means, select_n_clusters
from .exceptions import InputError, NotFittedError, WeightsUnavailableError
from .io import Assignments, collect_inputs
from .reduce import Reducer, umap_embedding


def _check_fitted(est, attr: str) -> None:
    try:
        _sk_check_is_fitted(est, attr)
    except _SkNotFittedError as e:
        raise NotFittedError(
            f"this {type(est).__name__} is not fitted yet; call fit() first or load a saved model with visclust.load()"
        ) from e


class FeatureClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Cluster a feature matrix and learn a classifier that assigns new rows.

    Pipeline: L2 -> PCA (whitened) -> L2 -> [UMAP] -> clustering -> linear SVM on the most
    confident members of each cluster, refined by self-training.

    Parameters
    ----------
    n_clusters : int or 'auto', default 8
        Number of groups; ``'auto'`` chooses it in ``k_range`` by silhouette.
    method : {'kmeans', 'gmm', 'agglomerative', 'hdbscan', 'spectral'}, default 'kmeans'
    n_components : int or None, default 64
        PCA dimensions (None: no PCA).
    whiten : bool, default True
    umap_components : int or None, default None
        When set, clusters are found in a UMAP embedding of this many dimensions.
    confident_fraction : float, default 0.5
        Share of each cluster used to train the classifier.
    self_training : int, default 2
        Self-training rounds of the classifier.
    reject_threshold : float, default 0.0
        Rows whose confidence is below this get cluster -1 ("fits no cluster").
    k_range : tuple of int, default (2, 30)
        Candidates for ``n_clusters='auto'``.
    n_init : int, default 10
        K-means restarts.
    random_state : int or None, default 0

    Attributes
    ----------
    labels_ : ndarray (n_samples,)
        Final assignment of each training row (the classifier's prediction).
    cluster_labels_ : ndarray (n_samples,)
        The clustering the classifier was trained from (-1 = noise for HDBSCAN).
    confidence_ : ndarray (n_samples,)
    n_clusters_ : int
    cluster_centers_ : ndarray (n_clusters_, n_components_)
        Mean of each cluster in the reduced space.
    reducer_ : Reducer
    classifier_ : PseudoLabelClassifier
    k_scores_ : dict
        Silhouette per candidate k when ``n_clusters='auto'``.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, centers=3, n_features=16, random_state=0)
    >>> FeatureClusterer(n_clusters=3, n_components=8).fit(X).n_clusters_
    3
    """

    def __init__(self, n_clusters=8, method: str = "kmeans", n_components: int | None = 64, whiten: bool = True,
                 umap_components: int | None = None, confident_fraction: float = 0.5, self_training: int = 2,
                 reject_threshold: float = 0.0, k_range=(2, 30), n_init: int = 10, random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.method = method
        self.n_components = n_components
        self.whiten = whiten
        self.umap_components = umap_components
        self.confident_fraction = confident_fraction
        self.self_training = self_training
        self.reject_threshold = reject_threshold
        self.k_range = k_range
        self.n_init = n_init
        self.random_state = random_state

    def _validate_params(self) -> int | None:
        check_method(self.method)
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
        if self.umap_components is not None and int(self.umap_components) < 1:
            raise InputError(f"umap_components must be a positive integer or None, got {self.umap_components}")
        return k

    def fit(self, X, y=None):
        """Fit on ``X`` of shape (n_samples, n_features). ``y`` is ignored."""
        k = self._validate_params()
        X = _as_features(X)
        if k is not None and len(X) < k:
            raise InputError(f"{len(X)} samples cannot form {k} clusters; use fewer clusters or more data")
        self.n_features_in_ = X.shape[1]
        self.reducer_ = Reducer(self.n_components, self.whiten).fit(X)
        Z = self.reducer_.transform(X)
        space = Z
        if self.umap_components:
            space = umap_embedding(Z, int(self.umap_components), random_state=self.random_state)
        self.k_scores_ = {}
        if k is None:
            k, self.k_scores_ = select_n_clusters(space, self.k_range, self.method, random_state=self.random_state)
        self.cluster_labels_ = cluster_features(space, k, self.method, random_state=self.random_state, n_init=self.n_init)
        found = int(self.cluster_labels_.max()) + 1 if (self.cluster_labels_ >= 0).any() else 0
        if found < 1:
            warnings.warn("the clustering found no cluster (all points are noise); every row is one group", stacklevel=2)
            self.cluster_labels_ = np.zeros(len(X), np.int64)
            found = 1
        margin = centroid_margin(space, self.cluster_labels_, cluster_means(space, self.cluster_labels_, found))
        self.classifier_ = PseudoLabelClassifier(self.confident_fraction, self.self_training,
                                                 random_state=self.random_state).fit(Z, self.cluster_labels_, margin)
        self.labels_, self.confidence_ = self._assign(Z)
        self.n_clusters_ = len(self.classifier_.classes_)
        self.cluster_centers_ = cluster_means(Z, self.labels_, self.n_clusters_)
        return self

    def _assign(self, Z):
        proba = self.classifier_.predict_proba(Z)
        best = proba.argmax(1)
        labels = self.classifier_.classes_[best].astype(np.int64)
        conf = proba[np.arange(len(Z)), best]
        if self.reject_threshold > 0:
            labels = np.where(conf < self.reject_threshold, -1, labels)
        return labels, conf

    def transform(self, X):
        """The reduced features ``(n_samples, n_components_)`` the classifier works in."""
        _check_fitted(self, "classifier_")
        return self.reducer_.transform(_as_features(X))

    def predict_with_confidence(self, X):
        """Cluster (-1 when rejected) and confidence in [0, 1] for each row."""
        return self._assign(self.transform(X))

    def predict(self, X):
        return self.predict_with_confidence(X)[0]

    def predict_proba(self, X):
        """Calibrated probability of each cluster ``(n_samples, n_clusters_)``."""
        return self.classifier_.predict_proba(self.transform(X))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model as one safe file (see :mod:`visclust.artifact`)."""
        from .artifact import save_model

        save_model(self, path)


def _as_features(X) -> np.ndarray:
    if not hasattr(X, "shape"):
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"features must be a numeric matrix: {e}") from e
    if X.ndim != 2:
        raise InputError(f"expected a feature matrix (n_samples, n_features), got an array of shape {X.shape}")
    return X


class ImageClusterer(BaseEstimator):
    """Group image files by what they show and assign new images to the groups.

    Parameters
    ----------
    backbone : str, default 'torchvision/mobilenet_v2'
        A name from :func:`visclust.backbones.list_backbones` (or ``timm/<model>``,
        ``open_clip/<arch>:<tag>``).
    weights : str, optional
        Local weights file (.safetensors, or .pth loaded with ``weights_only=True``);
        default downloads the pretrained weights the usual way.
    pretrained : bool, default True
        False keeps random weights (for testing plumbing only).
    n_clusters : int or 'auto', default 8
    clusterer : FeatureClusterer, optional
        Template for the clustering stage (its ``n_clusters`` is replaced by ``n_clusters``).
    batch_size : int, default 64
    num_workers : int, optional
        Decoding processes (default: one per spare core).
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

    Attributes
    ----------
    paths_ : list of str
        The training images that could be read, in order.
    labels_, confidence_ : ndarray (n_images,)
    skipped_ : list of (path, reason)
    feature_clusterer_ : FeatureClusterer
    backbone_config_ : BackboneConfig
    n_clusters_ : int

    Examples
    --------
    >>> model = ImageClusterer(n_clusters=10).fit(["photos/"])        # doctest: +SKIP
    >>> model.assign(["new_photos/"]).clusters                         # doctest: +SKIP
    """

    def __init__(self, backbone: str = "torchvision/mobilenet_v2", weights: str | None = None, pretrained: bool = True,
                 n_clusters=8, clusterer: FeatureClusterer | None = None, batch_size: int = 64,
                 num_workers: int | None = None, device: str | None = None, progress: bool | None = None,
                 store: str | None = None, engine: str = "auto"):
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
        self.engine = engine

    # -- backbone -----------------------------------------------------------------------
    def get_backbone(self):
        """The backbone (built once and cached); after ``load`` it must match the fitted one."""
        bb = getattr(self, "_backbone", None)
        if bb is None:
            from .backbones import Backbone, create_backbone

            bb = create_backbone(self.backbone, weights=self.weights, pretrained=self.pretrained)
            fitted = getattr(self, "backbone_config_", None)
            if fitted is not None:
                if bb.config.weights_sha256 != fitted.weights_sha256:
                    raise WeightsUnavailableError(
                        f"the model was fitted with other weights for '{fitted.name}' (sha256 "
                        f"{fitted.weights_sha256[:12]}..., now {bb.config.weights_sha256[:12]}...); "
                        "pass the same weights file with --weights"
                    )
                bb = Backbone(bb.info, bb.module, fitted.preprocess, fitted.weights_sha256, bb.weights_source)
            self._backbone = bb
        return bb

    def extract(self, inputs):
        """Features of the images in ``inputs`` (files, directories, list files)."""
        from .features import extract_features

        paths = collect_inputs(inputs)
        return extract_features(self.get_backbone(), paths, batch_size=self.batch_size,
                                num_workers=self.num_workers, device=self.device, progress=self.progress,
                                engine=self.engine, store=self.store)

    # -- estimator ------------------------------------------------------------------------
    def fit(self, X, y=None, features=None):
        """Fit on image inputs ``X`` (files, directories, list files). ``y`` is ignored.

        ``features`` may pass a precomputed :class:`visclust.features.FeatureResult` for
        ``X`` (from a feature store) so nothing is computed twice.
        """
        from .exceptions import NoImagesError

        template = self.clusterer if self.clusterer is not None else FeatureClusterer()
        if not isinstance(template, FeatureClusterer):
            raise InputError("clusterer must be a visclust.FeatureClusterer")
        fc = clone(template).set_params(n_clusters=self.n_clusters)
        fc._validate_params()
        res = features if features is not None else self.extract(X)
        if len(res.paths) == 0:
            raise NoImagesError(f"none of the {len(res.skipped)} images could be read (first: {res.skipped[0][1] if res.skipped else '-'})")
        self.feature_clusterer_ = fc.fit(res.features)
        self.backbone_config_ = self.get_backbone().config
        self.paths_ = list(res.paths)
        self.skipped_ = list(res.skipped)
        self.labels_ = fc.labels_
        self.confidence_ = fc.confidence_
        self.n_clusters_ = fc.n_clusters_
        return self

    def assign(self, X, features=None) -> Assignments:
        """Assign every readable image in ``X``; unreadable ones are listed in ``skipped``."""
        _check_fitted(self, "feature_clusterer_")
        res = features if features is not None else self.extract(X)
        if len(res.paths):
            labels, conf = self.feature_clusterer_.predict_with_confidence(res.features)
        else:
            labels, conf = np.zeros(0, np.int64), np.zeros(0)
        return Assignments(list(res.paths), labels, conf, list(res.skipped))

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


