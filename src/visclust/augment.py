"""Augmented copies of the training images, for the classifier step's self-training.

A classifier trained on the clustering's own frozen features can only reproduce the
clustering. Trained also on the features of augmented copies of each member (a random
resized crop, a mirror image, colour jitter, sometimes greyscale: SimCLR's recipe), with the
member's cluster as their label, it has to find what the copies of a cluster share, and its
relabelling corrects some members. That holds where these changes keep what an image shows,
as in photos. Where they do not (a mirrored digit, a part of a centred garment) the copy is
unlike any image of the collection, and :func:`visclust.classify.plausible_copies` leaves it
out; the classifier is then a small network that can follow clusters a linear rule cannot
(:class:`visclust.classify.PseudoLabelClassifier`, ``kind='mlp'``). Measured with 3 copies
(docs/benchmarks.md, "Copies that look like the collection"): CIFAR-10 test 0.517 -> 0.535
ACC, within 0.005 of the clustering on emoji, Fashion-MNIST and MNIST. Each copy costs one
more extraction of the collection, so it is an option, off by default.

The copies are written as PNG files into a temporary directory and sent through the same
backbones as the originals, so every extraction engine works unchanged; they are never
stored. Each copy is drawn from ``(seed, view, index of the image)``, so a rerun draws the
same copies.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

#: SimCLR's augmentation for small images: the crop covers 35-100% of the area with an aspect
#: ratio in 3/4..4/3; colour jitter (brightness, contrast, saturation 0.4, hue 0.1) with
#: probability 0.8; greyscale with probability 0.2; a mirror image with probability 0.5.
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)
P_JITTER, P_GREY, P_MIRROR = 0.8, 0.2, 0.5


def _crop_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random crop (torchvision's RandomResizedCrop rule:
    ten tries, then the central crop of the nearest allowed aspect ratio)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = w / h
    cw, ch = (w, int(round(w / CROP_RATIO[0]))) if ratio < CROP_RATIO[0] else \
        ((int(round(h * CROP_RATIO[1])), h) if ratio > CROP_RATIO[1] else (w, h))
    cw, ch = min(cw, w), min(ch, h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def augment_image(img, rng: np.random.Generator):
    """One augmented copy of the RGB :class:`PIL.Image.Image` ``img``, of the same size."""
    import torchvision.transforms.v2.functional as F

    w, h = img.size
    top, left, ch, cw = _crop_box(w, h, rng)
    out = F.resized_crop(img, top, left, ch, cw, [h, w])
    if rng.random() < P_MIRROR:
        out = F.horizontal_flip(out)
    if rng.random() < P_JITTER:
        b, c, s, hue = JITTER
        adjust = [(F.adjust_brightness, rng.uniform(1 - b, 1 + b)), (F.adjust_contrast, rng.uniform(1 - c, 1 + c)),
                  (F.adjust_saturation, rng.uniform(1 - s, 1 + s)), (F.adjust_hue, rng.uniform(-hue, hue))]
        for i in rng.permutation(len(adjust)):
            fn, factor = adjust[i]
            out = fn(out, float(factor))
    if rng.random() < P_GREY:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    return out


def write_copies(paths: Sequence[str], directory: str | os.PathLike, view: int, seed: int = 0,
                 short_side: int | None = None, progress: bool | None = None,
                 desc: str | None = None) -> list[str | None]:
    """Write one augmented copy of each image in ``paths`` under ``directory`` (as
    ``<view>/<index>.png``) and return their paths in the same order; ``None`` where the
    image cannot be read any more. Images whose shorter side exceeds ``short_side`` are
    reduced to it first (the backbone reduces them anyway; the copies stay small).
    ``progress`` shows a bar labelled ``desc`` (default: only on a terminal)."""
    from .features import _progress_bar

    out_dir = os.path.join(os.fspath(directory), str(int(view)))
    os.makedirs(out_dir, exist_ok=True)
    written: list[str | None] = []
    bar = _progress_bar(len(paths), progress, desc)
    try:
        for i, p in enumerate(paths):
            written.append(_write_copy(p, os.path.join(out_dir, f"{i}.png"),
                                       np.random.default_rng([int(seed), int(view), i]), short_side))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return written


def _write_copy(path: str, out: str, rng: np.random.Generator, short_side: int | None) -> str | None:
    """Write one augmented copy of ``path`` to ``out``; None when it cannot be read."""
    from .exceptions import VisclustError
    from .io import load_image

    try:
        img = load_image(path)
    except (OSError, VisclustError):
        return None
    if short_side and min(img.size) > short_side:
        f = short_side / min(img.size)
        img = img.resize((max(1, round(img.size[0] * f)), max(1, round(img.size[1] * f))), resample=3, reducing_gap=2.0)
    augment_image(img, rng).save(out)
    return out
