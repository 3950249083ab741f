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

The copies are written as PNG files into a temporary directory, by one worker process per
CPU, and sent through the same backbones as the originals, so every extraction engine works
unchanged; they are never stored, and a fit writes, extracts and deletes them 10,000 images
at a time (``model.COPY_CHUNK_IMAGES``), so the disk holds one part's copies. Each copy is
drawn from ``(seed, view, index of the image)``, so a rerun draws the same copies, however
many processes write them and in how many parts.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from .exceptions import InputError

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


#: zlib level of the copies' PNGs (lossless at any level: the same pixels, so the same
#: features). Pillow's default, 6, took 61 ms of the 92 ms a 512 x 343 photo's copy cost;
#: level 1 takes 13 ms for a file 12% larger (2026-12-05, 2-core AMD).
PNG_COMPRESS_LEVEL = 1
#: Fewer images than this are written in this process: starting worker processes costs more.
PARALLEL_MIN_IMAGES = 256
#: Images a worker process writes per task.
WRITE_BATCH = 64


def copy_workers() -> int:
    """Processes that write copies: one per CPU this process may use (at most 16). Nothing
    else runs meanwhile, so every core writes."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(16, n))


class _CopyBatches:
    """Dataset of batches of copies to write: item ``b`` writes batch ``b`` and returns the
    written paths (None where an image cannot be read), in order."""

    def __init__(self, paths, out_dir: str, view: int, seed: int, short_side, start: int):
        self.paths, self.out_dir, self.view, self.seed = paths, out_dir, int(view), int(seed)
        self.short_side, self.start = short_side, int(start)

    def __len__(self) -> int:
        return -(-len(self.paths) // WRITE_BATCH)

    def __getitem__(self, b: int) -> list:
        out = []
        for i in range(b * WRITE_BATCH, min(len(self.paths), (b + 1) * WRITE_BATCH)):
            k = self.start + i  # the image's index in the whole collection: its copy does not depend on chunks
            out.append(_write_copy(self.paths[i], os.path.join(self.out_dir, f"{k}.png"),
                                   np.random.default_rng([self.seed, self.view, k]), self.short_side))
        return out


def write_copies(paths: Sequence[str], directory: str | os.PathLike, view: int, seed: int = 0,
                 short_side: int | None = None, progress: bool | None = None,
                 desc: str | None = None, workers: int | None = None, start: int = 0) -> list[str | None]:
    """Write one augmented copy of each image in ``paths`` under ``directory`` (as
    ``<view>/<index>.png``) and return their paths in the same order; ``None`` where the
    image cannot be read any more. Images whose shorter side exceeds ``short_side`` are
    reduced to it first (the backbone reduces them anyway; the copies stay small).
    ``progress`` shows a bar labelled ``desc`` (default: only on a terminal).

    ``workers`` processes write them (default :func:`copy_workers`; 0 or 1: this process
    only). ``start`` is the index of ``paths[0]`` in the whole collection when it is written
    in parts: image ``start + i`` is drawn from ``(seed, view, start + i)`` and written as
    ``<start + i>.png``, so the copies do not depend on how the collection was divided.
    """
    import torch

    from .features import _collate, _progress_bar

    out_dir = os.path.join(os.fspath(directory), str(int(view)))
    os.makedirs(out_dir, exist_ok=True)
    nw = copy_workers() if workers is None else int(workers)
    if nw < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    ds = _CopyBatches(list(paths), out_dir, view, seed, short_side, start)
    if nw <= 1 or len(paths) < PARALLEL_MIN_IMAGES:
        batches = (ds[b] for b in range(len(ds)))
    else:
        batches = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=min(nw, len(ds)),
                                              collate_fn=_collate, persistent_workers=False)
    written: list[str | None] = []
    bar = _progress_bar(len(paths), progress, desc)
    try:
        for out in batches:
            written.extend(out)
            if bar is not None:
                bar.update(len(out))
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
    augment_image(img, rng).save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out
