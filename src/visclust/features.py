"""Images -> feature vectors: decode, preprocess and run the backbone in batches.

The hot path is built for throughput:

* DataLoader workers decode whole batches straight into one preallocated
  ``(n, size, size, 3)`` uint8 array (no per-image tensors, no collate copy); uint8 is 4x
  smaller than float to ship between processes.
* JPEGs are decoded at a reduced scale with PIL's ``draft()`` when the image is much
  larger than needed, and resize + centre crop are one resize with a box (Pillow's
  ``resize(box=...)``), computing only the pixels that survive the crop. Where Pillow's
  pixels can be reproduced exactly, :mod:`visclust._resample` computes them in compiled code
  that releases the GIL, in a fraction of Pillow's time (:func:`resize_crop_array`).
* The engine (:mod:`visclust.engines`) normalises the batch and runs the network: ONNX
  Runtime on CPU, PyTorch (bf16, channels_last) on CUDA.
* On CUDA, JPEGs can instead be decoded on the GPU (``decode='torch'`` or ``'nvimgcodec'``):
  workers only read the files (one buffer per batch), ``torchvision.io.decode_jpeg(device=
  'cuda')`` or NVIDIA nvImageCodec (the GPU's hardware JPEG decoder) decodes the whole batch
  in a thread one batch ahead of the network, on its own CUDA stream, and the
  resize + crop is two matrix products with PIL's coefficients; other formats and unusual
  JPEGs still decode with PIL. Batch k + 1 starts on the GPU before batch k's features are
  stored.
* With a :class:`~visclust.store.FeatureStore`, only files without a current row are
  computed, and rows are committed in atomic shards as they are made: memory stays bounded
  by a few batches plus one shard whatever the number of images.

Unreadable images are skipped and reported, never fatal.
"""

from __future__ import annotations

import functools
import os
import queue
import stat as statmod
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .backbones import Backbone, Preprocess
from .exceptions import ImageReadError, InputError
from .io import JPEG_HEADER_BYTES, jpeg_header_size, load_image_array

DECODERS = ("auto", "pil", "torch", "nvimgcodec")
GPU_DECODERS = ("torch", "nvimgcodec")  # workers only read the files; decoding happens on the engine's device


@dataclass
class FeatureResult:
    """Features of the images that could be read, in input order, plus what was skipped."""

    features: np.ndarray  # (n_ok, feature_dim) float32
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def concat_features(results: Sequence[FeatureResult]) -> FeatureResult:
    """Features of several backbones for the same images, side by side.

    Rows are the images every backbone could read, in the order of the first result. Each
    backbone's vector is L2-normalised first, so each contributes the same weight whatever
    its dimension or scale (a 4,096-d VGG vector would otherwise drown a 512-d one). An
    image skipped by any backbone is skipped, with the first reason given.
    """
    if not results:
        raise InputError("concat_features needs at least one FeatureResult")
    keep = set(results[0].paths)
    for r in results[1:]:
        keep &= set(r.paths)
    order = [p for p in results[0].paths if p in keep]
    blocks = []
    for r in results:
        pos = {p: i for i, p in enumerate(r.paths)}
        X = np.asarray(r.features[np.asarray([pos[p] for p in order], dtype=np.int64)], dtype=np.float32) \
            if order else np.zeros((0, np.shape(r.features)[1]), np.float32)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        blocks.append(X)
    skipped, seen = [], set()
    for r in results:
        for path, reason in r.skipped:
            if path not in seen and path not in keep:
                seen.add(path)
                skipped.append((path, reason))
    for r in results:  # read by some backbones but not all
        for path in r.paths:
            if path not in keep and path not in seen:
                seen.add(path)
                skipped.append((path, f"{path}: could not be read for every backbone"))
    return FeatureResult(np.hstack(blocks), order, skipped)


def merge_results(results: Sequence[FeatureResult], order: Sequence[str]) -> FeatureResult:
    """The rows of several results for different images (same backbones) as one result: the
    images of ``order`` (input paths) that any of them read, and those they skipped, in the
    order of ``order``; other rows are left out."""
    where = {}
    for j, r in enumerate(results):
        for i, p in enumerate(r.paths):
            where[p] = (j, i)
    kept = [p for p in order if p in where]
    dim = next((np.shape(r.features)[1] for r in results if np.ndim(r.features) == 2), 0)
    out = np.empty((len(kept), dim), np.float32)
    src = np.asarray([where[p] for p in kept], np.int64).reshape(-1, 2)
    for j, r in enumerate(results):
        mine = src[:, 0] == j
        if mine.any():
            out[mine] = r.features[src[mine, 1]]
    rank = {p: i for i, p in enumerate(order)}
    skipped = sorted((s for r in results for s in r.skipped if s[0] in rank), key=lambda s: rank[s[0]])
    return FeatureResult(out, kept, skipped)


@dataclass
class ExtractStats:
    """What one extraction into a store did."""

    n_inputs: int
    n_cached: int  # rows already in the store
    n_computed: int  # rows computed by this run
    skipped: list[tuple[str, str]]
    seconds: float
    engine: str
    store_path: str = ""

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- preprocessing


def _resample(pre: Preprocess):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}.get(pre.interpolation, Image.BILINEAR)


def _crop_geometry(w: int, h: int, pre: Preprocess) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)``: the shorter side resized to ``pre.resize_size`` (never
    below ``pre.input_size``), and where the centred ``input_size`` crop starts in it."""
    s = pre.input_size
    scale = pre.resize_size / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    return nw, nh, (nw - s) // 2, (nh - s) // 2


def resize_crop(img, pre: Preprocess):
    """Resize the shorter side to ``pre.resize_size`` and centre-crop ``pre.input_size``,
    as one PIL call: returns an ``input_size`` x ``input_size`` image.

    The crop is computed in resized pixels exactly as resize-then-crop would place it, then
    mapped back to the source (``resize(box=...)``), so only the kept pixels are computed.
    """
    w, h = img.size
    s = pre.input_size
    box, reduce_first = _resize_box(w, h, pre)
    if reduce_first is None:
        return img.crop(box)
    # reducing_gap: a cheap box reduction first for big downscales, then the real filter.
    return img.resize((s, s), _resample(pre), box=box, reducing_gap=3.0 if reduce_first else None)


def _resize_box(w: int, h: int, pre: Preprocess):
    """``(box, reduce_first)`` for a w x h image: the source box that becomes the centred
    ``input_size`` crop of the image resized to ``pre.resize_size``; ``reduce_first``: a large
    reduction, where Pillow first reduces by an integer factor; None when no resize is needed
    (then ``box`` is the crop, in whole pixels)."""
    s = pre.input_size
    nw, nh, left, top = _crop_geometry(w, h, pre)
    if (nw, nh) == (w, h):
        return (left, top, left + s, top + s), None
    sx, sy = w / nw, h / nh
    return (left * sx, top * sy, (left + s) * sx, (top + s) * sy), pre.resize_size < 0.5 * min(w, h)


def _filter(interpolation: str):
    """PIL's resampling filter ``(function, support)`` for ``interpolation``."""
    def bilinear(x):
        x = np.abs(x)
        return np.where(x < 1, 1 - x, 0.0)

    def bicubic(x, a=-0.5):
        x = np.abs(x)
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, ((x - 5) * x + 8) * x * a - 4 * a, 0.0))

    def lanczos(x):
        return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)

    return {"bicubic": (bicubic, 2.0), "lanczos": (lanczos, 3.0)}.get(interpolation, (bilinear, 1.0))


@functools.lru_cache(maxsize=64)
def resample_matrix(in_size: int, out_size: int, start: int, count: int, interpolation: str) -> np.ndarray:
    """``(count, in_size)`` float32: rows ``start .. start + count`` of resizing a line of
    ``in_size`` pixels to ``out_size``, with PIL's coefficients (antialiased: the filter
    widens by the downscale factor; each row normalised to sum 1).

    Resizing along both axes is then two matrix products, and the centre crop is only the
    rows it keeps: :func:`resize_crop_tensor`.
    """
    scale = in_size / out_size
    rows = np.arange(start, start + count)
    m = np.zeros((count, in_size), np.float64)
    if interpolation == "nearest":
        m[np.arange(count), np.minimum(((rows + 0.5) * scale).astype(np.int64), in_size - 1)] = 1.0
        return m.astype(np.float32)
    fn, support = _filter(interpolation)
    fscale = max(scale, 1.0)
    support *= fscale
    for r, i in enumerate(rows):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        wts = fn((taps - center + 0.5) / fscale)
        m[r, lo:hi] = wts / wts.sum() if wts.sum() != 0 else wts
    return m.astype(np.float32)


def resize_crop_tensor(x, pre: Preprocess):
    """:func:`resize_crop` for a batch of same-size images on any torch device: ``(n, c, h, w)``
    uint8 -> ``(n, c, s, s)`` float32 in 0..255, ``s = pre.input_size``.

    Two matrix products with PIL's resampling coefficients (:func:`resample_matrix`), which
    compute only the pixels the crop keeps: on a GPU they run on the matrix units (float16
    operands: pixel values are exact, coefficients to 5e-4) instead of an antialiasing
    kernel over the whole resized image (measured on an H200: docs/benchmarks.md).
    """
    import torch

    n, c, h, w = x.shape
    s = pre.input_size
    nw, nh, left, top = _crop_geometry(w, h, pre)
    dt = torch.float16 if x.device.type == "cuda" else torch.float32
    rows = torch.from_numpy(resample_matrix(h, nh, top, s, pre.interpolation)).to(x.device, dt)
    cols = torch.from_numpy(resample_matrix(w, nw, left, s, pre.interpolation)).to(x.device, dt)
    # along the width first, clipped as PIL clips its intermediate image; then the height
    y = torch.matmul(rows, torch.matmul(x.to(dt), cols.T).clamp_(0, 255))  # (n, c, h, s) -> (n, c, s, s)
    return y.float().clamp_(0, 255)


def preprocess_image(img, pre: Preprocess) -> np.ndarray:
    """Resize the shorter side to ``pre.resize_size``, centre-crop ``pre.input_size``.

    Returns ``(input_size, input_size, 3)`` uint8.
    """
    return np.asarray(resize_crop(img, pre), dtype=np.uint8)


#: Images that the backbone's own preprocessing enlarges by at least this factor are "small":
#: for them a second input size, this many times their size, is a candidate (see
#: :func:`small_image_preprocess`).
SMALL_IMAGE_UPSCALE = 4
#: Smallest candidate input size: a 3 x 3 map after the stride-32 stages of a CNN.
SMALL_IMAGE_MIN_INPUT = 96


def check_input_size(value, what: str = "input_size"):
    """``'auto'``, ``'backbone'`` or an int from 32 to 4096 (the input size the user asked for)."""
    if value in ("auto", "backbone"):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 32 <= value <= 4096:
        return int(value)
    raise InputError(f"{what} must be 'auto', 'backbone' or a number of pixels from 32 to 4096, got {value!r}")


def typical_short_side(paths: Sequence, sample: int = 64, side_of=None) -> int | None:
    """Median shorter side of up to ``sample`` evenly spaced ``paths``, read from the files'
    headers (nothing decoded); None when none of them can be read. ``side_of(item)`` gives
    the shorter side of an item of ``paths`` instead (images in memory: their sizes)."""
    from .io import image_short_side

    if not len(paths):
        return None
    side_of = image_short_side if side_of is None else side_of
    idx = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int))
    sides = [s for s in (side_of(paths[i]) for i in idx) if s]
    return int(np.median(sides)) if sides else None


def small_image_preprocess(pre: Preprocess, short_side: int | None) -> Preprocess | None:
    """The candidate preprocessing for images much smaller than the network's input, or None.

    A network pretrained at 224 x 224 sees a 32 x 32 image enlarged 7 times (8 with the
    centre crop's margin): a blur of a few large blobs, unlike anything it was trained on.
    When the backbone's preprocessing enlarges the images by :data:`SMALL_IMAGE_UPSCALE`
    times or more, this returns the same preprocessing at :data:`SMALL_IMAGE_UPSCALE` times
    the images' size instead (rounded up to a multiple of 32, the stride of CNN backbones;
    at least :data:`SMALL_IMAGE_MIN_INPUT`), the whole image resized with no centre crop
    (nothing to spare at this size). Whether it is used is decided on the user's images by
    the label-free stability criterion (:class:`visclust.model.ImageClusterer`,
    ``input_size='auto'``): it helps on some collections (CIFAR-10: ACC 0.45 -> 0.51) and
    hurts on others (8 x 8 digits).
    """
    if not short_side or pre.input_size < SMALL_IMAGE_UPSCALE * short_side:
        return None
    size = max(SMALL_IMAGE_MIN_INPUT, -(-SMALL_IMAGE_UPSCALE * short_side // 32) * 32)
    if size >= pre.input_size:
        return None
    return sized_preprocess(pre, size)


def sized_preprocess(pre: Preprocess, size: int) -> Preprocess:
    """``pre`` at input size ``size``, the shorter side resized to it (no centre-crop margin)."""
    from dataclasses import replace

    return replace(pre, input_size=int(size), resize_size=int(size))


def with_preprocess(backbone: Backbone, pre: Preprocess) -> Backbone:
    """The same network and weights with other preprocessing (its features get their own store key)."""
    return Backbone(backbone.info, backbone.module, pre, backbone.config.weights_sha256, backbone.weights_source)


def backbone_at_size(backbone: Backbone, size: int) -> Backbone:
    """``backbone`` on ``size`` x ``size`` inputs, no crop (``baseline/*`` keep their own size);
    a one-line error when the network does not run at that size."""
    if backbone.name.startswith("baseline/"):
        return backbone
    if not accepts_input_size(backbone, size):
        raise InputError(f"backbone '{backbone.name}' does not run on {size} x {size} inputs; "
                         "use --input-size backbone (its own size) or another size")
    return with_preprocess(backbone, sized_preprocess(backbone.preprocess, size))


def small_image_backbone(backbone: Backbone, paths: Sequence[str], short_side: int | None = None) -> Backbone | None:
    """``backbone`` at the smaller input size that :func:`small_image_preprocess` proposes
    for these images (of ``short_side``, when known: images in memory), or None (large enough
    images, ``baseline/*``, or a network that does not run at that size)."""
    if backbone.name.startswith("baseline/"):
        return None
    side = typical_short_side(paths) if short_side is None else short_side
    pre = small_image_preprocess(backbone.preprocess, side)
    if pre is None or not accepts_input_size(backbone, pre.input_size):
        return None
    return with_preprocess(backbone, pre)


def accepts_input_size(backbone: Backbone, size: int) -> bool:
    """Whether the network runs on ``size`` x ``size`` inputs and gives its usual features (a
    CNN does; a ViT with fixed position embeddings refuses)."""
    import torch

    try:
        p = next(iter(backbone.module.parameters()), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
        with torch.inference_mode():
            out = backbone.module(x)
        return tuple(out.reshape(1, -1).shape) == (1, backbone.feature_dim)
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False


def _stat(path: str):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except (OSError, ValueError):
        return None


#: Fewer images than this to decode in one process: Pillow resizes, unless numba is loaded already.
#: Loading numba and its compiler costs about 1.2 s and 230 MB of resident memory (half of it
#: shared library pages) once per process, measured on the 2-core machine; the compiled resize
#: saves about 0.24 ms of a core per CIFAR-sized image (0.14-0.34 ms for a photo), so it pays
#: from a few thousand images (docs/benchmarks.md, "the resize compiled outside the GIL").
COMPILED_RESIZE_MIN_IMAGES = 4000


def resize_crop_array(a: np.ndarray, pre: Preprocess, out: np.ndarray, compiled: bool = True) -> None:
    """:func:`resize_crop` of the (h, w, 3) uint8 image ``a`` into ``out`` (s, s, 3): the same
    pixels as Pillow's.

    Where Pillow's result can be reproduced exactly (its separable filters, no integer
    reduction first: :func:`visclust._resample.same_as_pillow`), it is computed by
    :func:`visclust._resample.resize_box`, compiled and outside the GIL: CIFAR's 32 x 32 ->
    224 in ~50 us against Pillow's ~290, a 500 x 375 photo in ~440 against ~780 us (~580
    against ~720 us when every photo has another size and its coefficients are computed anew);
    otherwise by Pillow. ``compiled=False``: Pillow, unless numba is loaded already (see
    :data:`COMPILED_RESIZE_MIN_IMAGES`).
    """
    h, w = a.shape[:2]
    s = pre.input_size
    box, reduce_first = _resize_box(w, h, pre)
    if reduce_first is None:
        out[...] = a[box[1]:box[3], box[0]:box[2]]
        return
    fast = _resample_module() if compiled or "numba" in sys.modules else None
    if not reduce_first and fast is not None and fast.same_as_pillow(h, w, s, s, pre.interpolation):
        fast.resize_box(a, (s, s), box, pre.interpolation, out)
        return
    from PIL import Image

    out[...] = np.asarray(resize_crop(Image.fromarray(a, "RGB"), pre))


@functools.lru_cache(maxsize=1)
def _resample_module():
    """:mod:`visclust._resample`, or None where numba cannot be imported (Pillow then resizes)."""
    try:
        from . import _resample
    except Exception:  # noqa: BLE001 - numba missing or broken: Pillow does the work
        return None
    return _resample


def _decode_one(path: str, pre: Preprocess, out: np.ndarray, compiled: bool = True):
    """Decode ``path`` into ``out`` (s, s, 3); return its (size, mtime_ns) taken before reading.
    ``compiled``: see :func:`resize_crop_array`."""
    st = _stat(path)
    resize_crop_array(load_image_array(path, draft_size=pre.resize_size), pre, out, compiled)
    return st


def _failure(path: str, e: Exception) -> str:
    if isinstance(e, ImageReadError):
        return str(e)
    # a bug in a decoder plugin must not stop a million-image run
    return f"{path}: unexpected decode failure ({type(e).__name__}: {e})"


@dataclass
class Batch:
    """Decoded images ``images[j]`` of ``paths[indices[j]]`` plus the failures of this batch.

    GPU decoding only: ``encoded`` holds the raw JPEG files of ``encoded_indices`` still to
    decode, back to back in one uint8 tensor (file ``j`` is
    ``encoded[encoded_offsets[j]:encoded_offsets[j + 1]]``): one buffer per batch crosses
    from a worker process, not one per image.
    """

    indices: np.ndarray
    images: object  # torch uint8 (n, s, s, 3)
    stats: list
    failed: list  # [(index, reason)]
    encoded: object = None
    encoded_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    encoded_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    encoded_stats: list = field(default_factory=list)

    @property
    def n_encoded(self) -> int:
        return len(self.encoded_indices)

    def encoded_files(self) -> list:
        """The raw JPEG of each of ``encoded_indices``, as views of ``encoded``."""
        o = self.encoded_offsets
        return [self.encoded[int(o[j]):int(o[j + 1])] for j in range(self.n_encoded)]


class BatchDataset:
    """Map-style dataset whose item ``b`` is the whole decoded batch ``b``.

    Parameters
    ----------
    paths : sequence of str
    batches : sequence of index arrays
    pre : Preprocess
    decode : {'pil', 'torch', 'nvimgcodec'}
        ``'torch'`` and ``'nvimgcodec'``: JPEGs that the GPU decoder handles are returned as
        raw bytes.
    compiled_resize : bool
        Resize in compiled code (:func:`resize_crop_array`); default: when the batches hold at
        least :data:`COMPILED_RESIZE_MIN_IMAGES` images (:func:`iter_batches` counts the share
        of each decoding process).
    """

    def __init__(self, paths: Sequence[str], batches, pre: Preprocess, decode: str = "pil",
                 compiled_resize: bool | None = None):
        self.paths = paths
        self.batches = batches
        self.pre = pre
        self.decode = decode
        if compiled_resize is None:
            compiled_resize = sum(len(b) for b in batches) >= COMPILED_RESIZE_MIN_IMAGES
        self.compiled_resize = compiled_resize

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Batch:
        import torch

        idx = self.batches[b]
        s = self.pre.input_size
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        ok, stats, failed = [], [], []
        enc, enc_idx, enc_stats = [], [], []
        for i in idx:
            path = self.paths[i]
            try:
                if self.decode in GPU_DECODERS:
                    raw = _read_gpu_jpeg(path)
                    if raw is not None:
                        enc.append(raw[1])
                        enc_idx.append(i)
                        enc_stats.append(raw[0])
                        continue
                stats.append(_decode_one(path, self.pre, out[len(ok)], self.compiled_resize))
                ok.append(i)
            except Exception as e:
                failed.append((int(i), _failure(path, e)))
        offsets = np.zeros(len(enc) + 1, np.int64)
        np.cumsum([len(e) for e in enc], out=offsets[1:])
        return Batch(np.asarray(ok, dtype=np.int64), torch.from_numpy(out[: len(ok)]), stats, failed,
                     torch.from_numpy(np.concatenate(enc)) if enc else None, offsets,
                     np.asarray(enc_idx, dtype=np.int64), enc_stats)


def _read_gpu_jpeg(path: str):
    """``(stat, bytes as uint8 array)`` for a plain RGB/greyscale JPEG, else None (decode with PIL)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not statmod.S_ISREG(info.st_mode):
        return None  # opening a FIFO would block; load_image reports what it is
    st = (info.st_size, info.st_mtime_ns)
    try:
        with open(path, "rb") as f:
            data = f.read(JPEG_HEADER_BYTES)  # the header decides before the rest is read
            if jpeg_header_size(data) is None:
                return None
            data += f.read()
    except OSError:
        return None  # PIL decoding then reports the reason
    return st, np.frombuffer(data, dtype=np.uint8)


def _collate(b):
    return b


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from e


def default_num_workers(device=None) -> int:
    """Decoding processes. With the model on the CPU and at most 4 cores: 0, that is one
    low-priority decoding thread in this process (measured on 2 cores, MobileNetV2 + ONNX
    Runtime, CIFAR JPEGs: 0.91-0.92 of model-only throughput, against 0.82-0.88 with one
    decoding process and 0.84 with the thread at normal priority; docs/benchmarks.md).
    More CPU cores: one process per spare core (up to 16). A GPU runs the model: one
    process per core, since the CPU then only decodes."""
    n = os.cpu_count() or 1
    if device is not None and getattr(device, "type", device) == "cuda":
        return max(1, min(16, n))
    if n <= 4:
        return 0
    return max(0, min(16, n - 1))


def iter_batches(paths: Sequence[str], pre: Preprocess, batch_size: int = 64, num_workers: int | None = None,
                 indices: Sequence[int] | None = None, decode: str = "pil", pin_memory: bool = False,
                 prefetch: int = 2):
    """Yield a :class:`Batch` per ``batch_size`` images of ``paths[indices]``, in order."""
    import torch

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    idx = np.arange(len(paths)) if indices is None else np.asarray(indices, dtype=np.int64)
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    nw = default_num_workers() if num_workers is None else int(num_workers)
    if nw < 0:
        raise InputError(f"workers must be 0 or more, got {num_workers}")
    # each decoding process loads numba for itself: its share of the images must pay for that
    ds = BatchDataset(paths, batches, pre, decode, compiled_resize=len(idx) / max(1, nw) >= COMPILED_RESIZE_MIN_IMAGES)
    if nw == 0:
        yield from _threaded((ds[b] for b in range(len(ds))), prefetch)
        return
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=nw, collate_fn=_collate,
                                         prefetch_factor=prefetch, pin_memory=pin_memory, persistent_workers=False)
    yield from loader


def _lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: decoding still works
        pass


def _threaded(items, prefetch: int, low_priority: bool = True):
    """Yield the items of the iterable ``items``, made ``prefetch`` ahead by one background thread.

    For CPU decoding ``items`` is ``ds[0], ds[1], ...`` of a :class:`BatchDataset`.

    PIL releases the GIL while it decodes and resizes, so the thread overlaps the model. It
    runs at the lowest priority: on a machine whose cores the model already fills, it decodes
    in the model's idle moments (between operators and batches) instead of preempting one of
    the model's threads, which stalls all of them at the next barrier. When the queue runs
    dry the model waits and the thread gets the cores, so throughput is never worse than
    decoding and computing in turn. No second process: no copy of the batch between
    processes and no second ~1 GB interpreter.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        if low_priority:
            _lower_thread_priority()
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator left early: stop its decoding workers now
                close()
        put(done)

    t = threading.Thread(target=work, name="visclust-decode", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


# --------------------------------------------------------------------------- GPU decoding


def _torchvision_decode(files: list, device) -> list:
    """``(3, h, w)`` uint8 tensors on ``device`` (None where a file could not be decoded):
    nvJPEG through ``torchvision.io.decode_jpeg``, which runs on the CUDA cores."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except Exception:  # one bad file fails the whole call: find it one by one
        imgs: list = [None] * len(files)
        for j, data in enumerate(files):
            try:
                imgs[j] = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
            except Exception:
                imgs[j] = None
        return imgs


NVIMGCODEC_INSTALL = ("pip install 'visclust[nvimgcodec]' (nvidia-nvimgcodec-cu12[nvjpeg] for CUDA 12), "
                      "or use decode='torch'")


def nvimgcodec_available() -> bool:
    """Whether NVIDIA nvImageCodec can be imported (``decode='nvimgcodec'``)."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install failing to load its libraries
        return False
    return True


_THREAD = threading.local()


def nvimgcodec_decoder(device_index: int, hw_load: float = 1.0):
    """This thread's nvImageCodec decoder for a GPU (made once per thread, GPU and share: a
    decoder is not shared between threads). The hardware JPEG decoder (the NVJPG engines of
    A100 / H100 / H200 class GPUs, which leave the CUDA cores to the network) takes a share
    ``hw_load`` of each batch; the rest, and what the hardware cannot decode, falls to
    nvJPEG on the CUDA cores, then to the CPU."""
    decoders = _THREAD.__dict__.setdefault("nvimgcodec", {})
    if (device_index, hw_load) in decoders:
        return decoders[device_index, hw_load]
    try:
        from nvidia import nvimgcodec
    except Exception as e:  # noqa: BLE001
        raise InputError(f"decode='nvimgcodec' needs NVIDIA nvImageCodec ({e}): {NVIMGCODEC_INSTALL}") from None
    kinds = nvimgcodec.BackendKind
    backends = [nvimgcodec.Backend(kinds.GPU_ONLY), nvimgcodec.Backend(kinds.CPU_ONLY)]
    if hw_load > 0:
        backends.insert(0, nvimgcodec.Backend(kinds.HW_GPU_ONLY, load_hint=hw_load))
    dec = decoders[device_index, hw_load] = nvimgcodec.Decoder(device_id=device_index, backends=backends)
    return dec


NVIMGCODEC_HW_LOAD = 1.0  # share of each batch offered to the hardware JPEG decoder


def _nvimgcodec_decode(files: list, device) -> list:
    """:func:`_torchvision_decode` with NVIDIA nvImageCodec (hardware JPEG decoder first)."""
    import torch
    from nvidia import nvimgcodec

    dec = nvimgcodec_decoder(device.index if device.index is not None else torch.cuda.current_device(),
                             NVIMGCODEC_HW_LOAD)
    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.RGB)
    stream = torch.cuda.current_stream(device)
    data = [f.numpy() if hasattr(f, "numpy") else f for f in files]
    try:
        out = dec.decode(data, params=params, cuda_stream=stream.cuda_stream)
    except Exception:  # noqa: BLE001 - one bad file can fail the whole call: find it one by one
        out = []
        for d in data:
            try:
                out.append(dec.decode(d, params=params, cuda_stream=stream.cuda_stream))
            except Exception:  # noqa: BLE001
                out.append(None)
    return [None if im is None else _nvimgcodec_view(im, device) for im in out]


def _nvimgcodec_view(im, device):
    """A CHW uint8 tensor on the memory of the HWC ``nvimgcodec.Image`` ``im``.

    Through ``__cuda_array_interface__`` the tensor holds a reference to ``im``, which owns
    the memory. Measured on an H200 (docs/benchmarks.md): ``torch.from_dlpack`` views did
    not keep it (an illegal memory access in the first run) and, kept alive by hand, cost
    27.7 instead of 13.6 us per image, and made the resize after them slower too.
    """
    import torch

    return torch.as_tensor(im, device=device).permute(2, 0, 1)


def _decode_encoded(batch: Batch, paths, pre: Preprocess, device, decoder: str = "torch"):
    """Decode the raw JPEGs of ``batch`` on ``device`` with ``decoder`` (one of
    :data:`GPU_DECODERS`); return (indices, stats, float NCHW 0..255 of every image of the
    batch), moving failures to ``batch.failed``."""
    import torch

    files = batch.encoded_files()
    imgs = (_nvimgcodec_decode if decoder == "nvimgcodec" else _torchvision_decode)(files, device)
    s = pre.input_size
    out_idx = list(batch.indices)
    out_stats = list(batch.stats)
    parts = [batch.images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()] if len(batch.indices) else []
    groups: dict[tuple[int, int], list[int]] = {}
    for j, im in enumerate(imgs):
        if im is None:
            # Let PIL decode it (it may manage, or it says why it cannot).
            i = int(batch.encoded_indices[j])
            try:
                arr = np.empty((s, s, 3), np.uint8)
                st = _decode_one(paths[i], pre, arr)
                parts.append(torch.from_numpy(arr).to(device).permute(2, 0, 1)[None].float())
                out_idx.append(i)
                out_stats.append(st)
            except Exception as e:
                batch.failed.append((i, _failure(paths[i], e)))
            continue
        groups.setdefault(tuple(im.shape[1:]), []).append(j)
    for (h, w), js in groups.items():  # one resize per image size
        parts.append(resize_crop_tensor(torch.stack([imgs[j] for j in js]), pre))
        out_idx.extend(int(batch.encoded_indices[j]) for j in js)
        out_stats.extend(batch.encoded_stats[j] for j in js)
    if not parts:
        return np.zeros(0, np.int64), [], None
    x = torch.cat(parts)
    if decoder == "nvimgcodec" and device.type == "cuda":
        # nvImageCodec frees an image's memory on its own terms once the last tensor on it
        # is gone: let the copies out of them finish first (this is the decoding thread).
        torch.cuda.current_stream(device).synchronize()
    return np.asarray(out_idx, dtype=np.int64), out_stats, x


# --------------------------------------------------------------------------- extraction


def _resolve_decode(decode: str, engine) -> str:
    if decode not in DECODERS:
        raise InputError(f"unknown decoder {decode!r}; choose one of {', '.join(DECODERS)}")
    dev = getattr(engine, "device", None)
    if decode == "auto":
        # torchvision's nvJPEG: nvImageCodec's hardware decoder was slower end to end on an
        # H200 (docs/benchmarks.md), so it is used only when asked for
        return "torch" if dev is not None and dev.type == "cuda" and hasattr(engine, "forward_nchw") else "pil"
    if decode in GPU_DECODERS and not hasattr(engine, "forward_nchw"):
        raise InputError(f"decode={decode!r} needs the torch engine (use engine='torch')")
    if decode == "nvimgcodec":
        _check_nvimgcodec_device(dev)
        if not nvimgcodec_available():
            raise InputError(f"decode='nvimgcodec' needs NVIDIA nvImageCodec: {NVIMGCODEC_INSTALL}")
    return decode


def _decoder_for(decode: str, engine, device) -> str:
    """The decoder an extraction will use, known before building the engine."""
    if not isinstance(engine, str):
        return _resolve_decode(decode, engine)
    if decode not in DECODERS:
        raise InputError(f"unknown decoder {decode!r}; choose one of {', '.join(DECODERS)}")
    if decode == "auto":
        return "torch" if resolve_device(device).type == "cuda" and engine != "onnx" else "pil"
    if decode == "nvimgcodec":
        _check_nvimgcodec_device(resolve_device(device))
    return decode


def _check_nvimgcodec_device(dev) -> None:
    if dev is None or dev.type != "cuda":
        raise InputError("decode='nvimgcodec' decodes on a CUDA GPU; on the CPU use decode='pil'")


GPU_DECODE_THREADS = 1  # threads decoding batches at once on the GPU (each with its own CUDA stream)


def _gpu_decoded(batches, paths, pre: Preprocess, device, decoder: str = "torch", threads: int | None = None):
    """``(batch, indices, stats, x)`` per batch of ``batches``, in order, ``x`` the decoded NCHW
    pixels on ``device`` (None when nothing of the batch could be read).

    A background thread decodes (``decoder``: ``'torch'`` or ``'nvimgcodec'``, then the resize)
    up to two batches ahead, on its own CUDA stream, while the caller runs the network on the
    current one: the GPU's JPEG decoder and the model overlap instead of taking turns. With
    ``threads`` > 1 (default :data:`GPU_DECODE_THREADS`) that many threads decode successive
    batches at once, each on a stream of its own (for decoders whose one call cannot keep
    the hardware busy; not yet measured on a GPU).
    """
    import collections
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    import torch

    cuda = device is not None and device.type == "cuda"
    local = threading.local()

    def decode(b):
        stream = getattr(local, "stream", None)
        if cuda and stream is None:
            stream = local.stream = torch.cuda.Stream(device)
        with (torch.cuda.device(device) if cuda else contextlib.nullcontext()), \
                (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
            if b.n_encoded:
                idx, stats, x = _decode_encoded(b, paths, pre, device, decoder)
            else:
                idx, stats = b.indices, b.stats
                x = b.images.to(device, non_blocking=True).permute(0, 3, 1, 2) if len(idx) else None
            ready = None
            if cuda and x is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
        return b, idx, stats, x, ready

    threads = GPU_DECODE_THREADS if threads is None else threads

    def produce():
        if threads <= 1:
            yield from map(decode, batches)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="visclust-gpu-decode") as pool:
            pending: collections.deque = collections.deque()
            try:
                for b in batches:
                    pending.append(pool.submit(decode, b))
                    if len(pending) > threads:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()

    for b, idx, stats, x, ready in _threaded(produce(), 2, low_priority=False):
        if ready is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(ready)
            x.record_stream(current)  # its memory is not reused before the network has read it
        yield b, idx, stats, x


def _run(backbone: Backbone, paths, indices, engine, batch_size, num_workers, decode, bar, on_batch):
    """Decode + forward ``paths[indices]``; call ``on_batch(indices, stats, features, failed)``.

    With the torch engine on CUDA, batch ``k + 1`` is started on the GPU before the features
    of batch ``k`` are handed to ``on_batch`` (store writes, fsync): the GPU is not idle
    while the host does its part.
    """
    dev = getattr(engine, "device", None)
    cuda = dev is not None and dev.type == "cuda"
    decode = _resolve_decode(decode, engine)
    nw = default_num_workers(dev) if num_workers is None else num_workers
    batches = iter_batches(paths, backbone.preprocess, batch_size, nw, indices=indices, decode=decode, pin_memory=cuda)
    gpu = decode in GPU_DECODERS
    if gpu:
        work = _gpu_decoded(batches, paths, backbone.preprocess, dev, decode)
    else:
        work = ((b, b.indices, b.stats, b.images if len(b.indices) else None) for b in batches)
    lag = cuda and hasattr(engine, "forward_nchw_async")

    def finish(item):
        b, idx, stats, Y = item
        if Y is not None and not isinstance(Y, np.ndarray):
            Y = Y.result()
        on_batch(idx, stats, Y, b.failed)
        if bar is not None:
            bar.update(len(idx) + len(b.failed))

    pending = None
    for b, idx, stats, x in work:
        if not lag:
            finish((b, idx, stats, None if x is None else engine.forward_nchw(x) if gpu else engine(x)))
            continue
        Y = None if x is None else engine.forward_nchw_async(x if gpu else engine.to_nchw(x))
        if pending is not None:
            finish(pending)
        pending = (b, idx, stats, Y)
    if pending is not None:
        finish(pending)


def extract_features(backbone: Backbone, paths: Sequence[str], *, batch_size: int = 64,
                     num_workers: int | None = None, device: str | None = None,
                     progress: bool | None = None, engine="auto", store=None, dtype: str = "float32",
                     decode: str = "auto", desc: str | None = None) -> FeatureResult:
    """Compute the backbone's features for every readable image in ``paths``.

    Parameters
    ----------
    backbone : Backbone
    paths : sequence of str
        Image files (use :func:`visclust.io.collect_inputs` to expand directories).
    batch_size : int, default 64
    num_workers : int, optional
        Decoding processes; default :func:`default_num_workers`.
    device : str, optional
        ``'cpu'``, ``'cuda'`` ...; default CUDA when available.
    progress : bool, optional
        Show a progress bar (images/s, ETA); default only when stderr is a terminal.
    engine : {'auto', 'torch', 'onnx'} or engine object, default 'auto'
        See :func:`visclust.engines.create_engine`.
    store : str, path or FeatureStore, optional
        Reuse the rows already there, compute only the others and add them.
    dtype : {'float32', 'float16'}, default 'float32'
        How new rows are stored (features are returned as float32 either way).
    decode : {'auto', 'pil', 'torch', 'nvimgcodec'}, default 'auto'
        ``'torch'`` decodes JPEGs with ``torchvision.io.decode_jpeg`` on the engine's
        device; ``'nvimgcodec'`` with NVIDIA nvImageCodec on the GPU's hardware JPEG decoder
        where it has one (``pip install 'nvidia-nvimgcodec-cu13[nvjpeg]'``), nvJPEG on the
        CUDA cores otherwise (same pixels as ``'torch'``; slower end to end on an H200:
        docs/benchmarks.md); ``'auto'`` is ``'torch'`` on CUDA, ``'pil'`` elsewhere.
    desc : str, optional
        What the progress bar says it is computing (e.g. ``'augmented copy 1/3'``).

    Returns
    -------
    FeatureResult
        ``features`` is ``(n_readable, backbone.feature_dim)`` float32 in input order.
    """
    paths = list(paths)
    if store is not None:
        st = open_store(store, backbone, _decoder_for(decode, engine, device))
        stats = compute_features(backbone, paths, st, batch_size=batch_size, num_workers=num_workers, device=device,
                                 progress=progress, engine=engine, dtype=dtype, decode=decode, desc=desc)
        X, found, _ = st.read(paths)
        return FeatureResult(X, [paths[i] for i in found], stats.skipped)
    eng = _make_engine(backbone, engine, device)
    feats = np.empty((len(paths), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def on_batch(idx, _stats, Y, failed):
        if Y is not None:
            feats[idx] = Y
            ok[idx] = True
        skipped.extend((paths[i], msg) for i, msg in failed)

    bar = _progress_bar(len(paths), progress, desc)
    try:
        _run(backbone, paths, None, eng, batch_size, num_workers, decode, bar, on_batch)
    finally:
        if bar is not None:
            bar.close()
    keep = np.flatnonzero(ok)
    order = {p: k for k, p in enumerate(paths)}
    skipped.sort(key=lambda t: order.get(t[0], 0))
    return FeatureResult(feats[keep], [paths[i] for i in keep], skipped)


def extract_images(backbone: Backbone, images: Sequence, *, batch_size: int = 64, device: str | None = None,
                   engine="auto", names: Sequence[str] | None = None, progress: bool | None = False,
                   desc: str | None = None) -> np.ndarray:
    """The backbone's features of images already in memory, ``(n, feature_dim)`` float32.

    ``images`` are PIL images or uint8 arrays (:func:`visclust.io.image_object_array`),
    converted a batch at a time (a list of large photos is not copied whole), and resized and
    cropped exactly as decoded files are, so an image gives the features its file gives (a
    large JPEG file is decoded at a reduced scale, ``Image.draft``; in memory it is already
    decoded, at full size). ``names[i]`` names image ``i`` in errors (default ``<image i>``).
    No worker processes, no store.
    """
    from .io import image_object_array

    pre = backbone.preprocess
    eng = _make_engine(backbone, engine, device)
    out = np.empty((len(images), backbone.feature_dim), np.float32)
    s, step = pre.input_size, max(1, int(batch_size))
    bar = _progress_bar(len(images), progress, desc)
    try:
        for start in range(0, len(images), step):
            part = images[start:start + step]
            x = np.empty((len(part), s, s, 3), np.uint8)
            for j, obj in enumerate(part):
                name = names[start + j] if names is not None else f"<image {start + j}>"
                resize_crop_array(image_object_array(obj, name), pre, x[j], compiled=False)
            out[start:start + len(part)] = eng(x)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return out


def compute_features(backbone: Backbone, paths: Sequence[str], store, *, batch_size: int = 64,
                     num_workers: int | None = None, device: str | None = None, progress: bool | None = None,
                     engine="auto", dtype: str = "float32", decode: str = "auto", shard_rows: int = 4096,
                     flush_seconds: float = 30.0, compile: bool = False, desc: str | None = None) -> ExtractStats:
    """Compute into ``store`` the features of the ``paths`` it has no current row for.

    Nothing is kept in memory beyond a few batches and one shard; a crash or ``kill -9``
    loses at most the rows not yet committed (``shard_rows`` rows or ``flush_seconds``).
    Other parameters as in :func:`extract_features`; ``compile=True`` compiles the network
    (:func:`visclust.engines.create_engine`).

    Returns
    -------
    ExtractStats
        ``skipped`` lists every unreadable file of ``paths`` (path, reason).
    """
    from .store import check_dtype

    check_dtype(dtype)
    if decode not in DECODERS:
        raise InputError(f"unknown decoder {decode!r}; choose one of {', '.join(DECODERS)}")
    paths = list(paths)
    t0 = time.perf_counter()
    eng = None if isinstance(engine, str) else engine
    store = open_store(store, backbone, _decoder_for(decode, engine, device))
    todo = store.missing(paths)
    n_cached = len(paths) - len(todo)
    if todo and eng is None:
        eng = _make_engine(backbone, engine, device, compile)
    skipped: list[tuple[str, str]] = []
    bar = _progress_bar(len(todo), progress, desc) if todo else None
    try:
        with store.writer(dtype=dtype, shard_rows=shard_rows, flush_seconds=flush_seconds) as w:
            def on_batch(idx, stats, Y, failed):
                if Y is not None:
                    w.add([paths[i] for i in idx], stats, Y)
                for i, msg in failed:
                    prefix = f"{paths[i]}: "
                    w.add_skipped(paths[i], _stat(paths[i]), msg[len(prefix):] if msg.startswith(prefix) else msg)
                    skipped.append((paths[i], msg))

            if todo:
                _run(backbone, paths, todo, eng, batch_size, num_workers, decode, bar, on_batch)
    finally:
        if bar is not None:
            bar.close()
    n_computed = w.rows_written
    if skipped or store.skipped():
        store.write_skipped_csv()
    return ExtractStats(len(paths), n_cached, n_computed, skipped, time.perf_counter() - t0,
                        getattr(eng, "name", "none"), store.path)


def open_store(store, backbone: Backbone, decoder: str = "pil"):
    """``store`` (a directory or a FeatureStore) as the FeatureStore for ``backbone``'s rows."""
    from .store import FeatureStore

    if isinstance(store, FeatureStore):
        if store.config != backbone.config or store.decoder != decoder:
            raise InputError(f"the feature store {store.path} holds features of another backbone config "
                             f"({store.config.name}, {store.decoder} decoding); open "
                             f"FeatureStore(root, backbone.config, decoder={decoder!r})")
        return store
    return FeatureStore(store, backbone.config, decoder=decoder)


def _make_engine(backbone, engine, device, compile: bool = False):
    from .engines import create_engine

    if isinstance(engine, str):
        return create_engine(backbone, engine, device, compile=compile)
    if compile:
        raise InputError("compile=True applies to an engine visclust makes; pass "
                         "TorchEngine(backbone, device, compile=True) as the engine instead")
    return engine


def _progress_bar(total: int, progress: bool | None, desc: str | None = None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    try:  # a terminal that reports no size (some ptys, CI consoles) would get an empty bar
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        sized = False
    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=sized, ncols=None if sized else 100,
                nrows=None if sized else 24, file=sys.stderr, smoothing=0.1)
