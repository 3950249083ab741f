"""The optional learned step on frozen features: an autoencoder whose code is clustered.

This is N2D (McConville et al. 2020): train a small fully-connected autoencoder on the
features with a reconstruction loss, embed its code with UMAP and cluster that. It is the
original design's "optimiser with a reconstruction loss over the unlabeled data", kept small
enough to train on a CPU in seconds to minutes (about 1.6 M weights for 64-d inputs).

visclust uses it only as one more candidate space (``'autoencoder'``) of
:func:`visclust.select.select_pipeline`: the label-free stability criterion decides whether
it is used on the user's data. The autoencoder is needed only while fitting (new images are
assigned by the linear classifier in the PCA space), so it is never saved.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .exceptions import InputError


class FeatureAutoencoder(TransformerMixin, BaseEstimator):
    """Fully-connected autoencoder ``d -> 500 -> 500 -> 2000 -> code -> ... -> d`` (N2D/DEC sizes).

    Parameters
    ----------
    code_size : int, default 10
        Dimensions of the code (N2D uses the number of clusters; 10 is its default).
    hidden : tuple of int, default (500, 500, 2000)
    epochs : int, default 30
        Passes over the data. Training stops earlier when ``max_steps`` is reached.
    max_steps : int, default 3000
        Bound on optimiser steps, so the cost stays bounded for large collections.
    batch_size : int, default 256
    lr : float, default 1e-3
        Adam learning rate.
    random_state : int or None, default 0

    Attributes
    ----------
    loss_curve_ : list of float
        Mean reconstruction loss (MSE) per epoch.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 16)).astype("float32")
    >>> FeatureAutoencoder(code_size=4, epochs=2).fit_transform(X).shape
    (200, 4)
    """

    def __init__(self, code_size: int = 10, hidden=(500, 500, 2000), epochs: int = 30, max_steps: int = 3000,
                 batch_size: int = 256, lr: float = 1e-3, random_state: int | None = 0):
        self.code_size = code_size
        self.hidden = hidden
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state

    def _build(self, d: int):
        import torch.nn as nn

        sizes = [d, *[int(h) for h in self.hidden], int(self.code_size)]
        enc, dec = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.pop()  # linear code
        rev = sizes[::-1]
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec.pop()  # linear reconstruction
        return nn.Sequential(*enc), nn.Sequential(*dec)

    def fit(self, X, y=None):
        """Train on ``X`` (n_samples, n_features) with the reconstruction loss. ``y`` is ignored."""
        import torch

        for name in ("code_size", "epochs", "max_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr!r}")
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise InputError(f"expected a feature matrix (n_samples >= 2, n_features), got shape {X.shape}")
        self.n_features_in_ = X.shape[1]
        # Standardise so the loss weighs every input dimension alike; stored for transform.
        self.mean_ = X.mean(0)
        self.scale_ = np.maximum(X.std(0), 1e-6)
        Xs = torch.from_numpy((X - self.mean_) / self.scale_)
        gen = torch.Generator().manual_seed(0 if self.random_state is None else int(self.random_state))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if self.random_state is None else int(self.random_state))
            self.encoder_, self.decoder_ = self._build(X.shape[1])
        params = list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        bs = int(min(self.batch_size, len(X)))
        self.loss_curve_, steps = [], 0
        for _ in range(int(self.epochs)):
            order = torch.randperm(len(X), generator=gen)
            total = 0.0
            for s in range(0, len(X) - bs + 1, bs):
                xb = Xs[order[s:s + bs]]
                loss = torch.nn.functional.mse_loss(self.decoder_(self.encoder_(xb)), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                steps += 1
                if steps >= self.max_steps:
                    break
            self.loss_curve_.append(total / (len(X) // bs * bs))
            if steps >= self.max_steps:
                break
        self.encoder_.eval()
        self.decoder_.eval()
        return self

    def transform(self, X):
        """The code ``(n_samples, code_size)`` of each row."""
        import torch

        check_is_fitted(self, "encoder_")
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise InputError(f"expected {self.n_features_in_} features per row, got shape {X.shape}")
        with torch.inference_mode():
            return self.encoder_(torch.from_numpy((X - self.mean_) / self.scale_)).numpy().astype(np.float32)

    def reconstruction_error(self, X) -> float:
        """Mean squared reconstruction error of ``X`` in standardised units."""
        import torch

        code = self.transform(X)
        with torch.inference_mode():
            rec = self.decoder_(torch.from_numpy(code)).numpy()
        return float(np.mean((rec - (np.asarray(X, np.float32) - self.mean_) / self.scale_) ** 2))
