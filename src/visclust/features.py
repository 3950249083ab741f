"""Images -> feature vectors: decode, preprocess and run the backbone in batches.

Decoding runs in DataLoader worker processes and ships uint8 tensors (4x smaller than
float); normalisation happens once per batch on the model's device. Unreadable images are
skipped and reported, never fatal.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .backbones import Backbone, Preprocess
from .exceptions import ImageReadError
from .io import load_image


@dataclass
class FeatureResult:
    """Features of the images that could be read, in input order, plus what was skipped."""

    features: np.ndarray  # (n_ok, feature_dim) float32
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def preprocess_image(img, pre: Preprocess) -> np.ndarray:
    """Resize the shorter side to ``pre.resize_size``, centre-crop ``pre.input_size``.

    Returns ``(input_size, input_size, 3)`` uint8.
    """
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(pre.interpolation, Image.BILINEAR)
    w, h = img.size
    scale = pre.resize_size / min(w, h)
    nw, nh = max(pre.input_size, round(w * scale)), max(pre.input_size, round(h * scale))
    if (nw, nh) != (w, h):
        # reducing_gap: a cheap box reduction first for big downscales, then the real filter.
        img = img.resize((nw, nh), resample, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (nw - pre.input_size) // 2, (nh - pre.input_size) // 2
    img = img.crop((left, top, left + pre.input_size, top + pre.input_size))
    return np.asarray(img, dtype=np.uint8)


class ImageDataset:
    """Map-style dataset: item i is ``(i, uint8 CHW tensor or None, error message)``."""

    def __init__(self, paths: Sequence[str], pre: Preprocess):
        self.paths = list(paths)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        try:
            img = load_image(self.paths[i], draft_size=self.pre.resize_size)
            arr = preprocess_image(img, self.pre)
        except ImageReadError as e:
            return i, None, str(e)
        except Exception as e:  # a bug in a decoder plugin must not stop a million-image run
            return i, None, f"{self.paths[i]}: unexpected decode failure ({type(e).__name__}: {e})"
        return i, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), ""


def collate(items):
    import torch

    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, msg) for i, t, msg in items if t is None]
    idx = [i for i, _ in ok]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return idx, batch, failed


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_num_workers() -> int:
    # Decoding competes with the model for the same cores: one worker per spare core.
    n = os.cpu_count() or 1
    return max(0, min(8, n - 1))


def iter_batches(paths: Sequence[str], pre: Preprocess, batch_size: int = 64, num_workers: int | None = None):
    """Yield ``(indices, uint8 batch (N,3,H,W) or None, [(index, reason), ...])`` in order."""
    import torch

    ds = ImageDataset(paths, pre)
    nw = default_num_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=nw, collate_fn=collate,
        prefetch_factor=4 if nw else None, persistent_workers=False,
    )
    yield from loader


class FeatureRunner:
    """Runs a backbone on uint8 batches: normalise, forward, return float32 numpy."""

    def __init__(self, backbone: Backbone, device: str | None = None):
        import torch

        self.device = resolve_device(device)
        self.module = backbone.module.to(self.device).eval()
        pre = backbone.preprocess
        self.mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).float()
            x = (x - self.mean) / self.std
            y = self.module(x)
            return y.float().cpu().numpy().reshape(len(x), -1)


def extract_features(backbone: Backbone, paths: Sequence[str], *, batch_size: int = 64,
                     num_workers: int | None = None, device: str | None = None,
                     progress: bool | None = None) -> FeatureResult:
    """Compute the backbone's features for every readable image in ``paths``.

    Parameters
    ----------
    backbone : Backbone
    paths : sequence of str
        Image files (use :func:`visclust.io.collect_inputs` to expand directories).
    batch_size : int, default 64
    num_workers : int, optional
        Decoding processes; default one per spare CPU core.
    device : str, optional
        ``'cpu'``, ``'cuda'`` ...; default CUDA when available.
    progress : bool, optional
        Show a progress bar; default only when stderr is a terminal.

    Returns
    -------
    FeatureResult
        ``features`` is ``(n_readable, backbone.feature_dim)`` float32 in input order.
    """
    runner = FeatureRunner(backbone, device)
    feats = np.empty((len(paths), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[tuple[str, str]] = []
    bar = _progress_bar(len(paths), progress)
    try:
        for idx, batch, failed in iter_batches(paths, backbone.preprocess, batch_size, num_workers):
            if batch is not None:
                feats[idx] = runner(batch)
                ok[idx] = True
            skipped.extend((paths[i], msg) for i, msg in failed)
            if bar is not None:
                bar.update(len(idx) + len(failed))
    finally:
        if bar is not None:
            bar.close()
    keep = np.flatnonzero(ok)
    return FeatureResult(feats[keep], [paths[i] for i in keep], skipped)


def _progress_bar(total: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)
