"""Pillow's resampling (``Image.resize`` with a box), bit for bit, compiled without the GIL.

Decoding on a 2-core machine competes with the model for the same cores, and for small
images most of a decode is the enlargement to the network's input (CIFAR's 32 x 32 -> 256,
centre crop 224: about 270 us of the 413 us an image costs in Pillow). This module computes
the same pixels as Pillow's ``ImagingResample`` for 8-bit RGB (the same double-precision
filter coefficients, the same 22-bit fixed-point sums, the same rounding and clipping, the
horizontal pass over the rows the vertical pass needs, then the vertical pass), so features
do not change, in a numba function that runs in a fraction of the time and releases the GIL.

Only Pillow's separable filters are reproduced (bilinear, bicubic, lanczos). Callers keep
Pillow for nearest-neighbour and for large reductions, where Pillow first reduces by an
integer factor (``reducing_gap``), a different computation.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from . import _jit

PRECISION_BITS = 32 - 8 - 2  # Pillow's: 8 bits of result, 2 of headroom for negative lobes


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)  # each branch in the order of Pillow's C expression (no fused operations)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: np.ndarray) -> np.ndarray:
    # math.sin, the C library's, element by element: NumPy's vectorised sin may differ in the
    # last bit, enough to move a weight's rounding
    return np.array([_sinc(v) * _sinc(v / 3) if -3.0 <= v < 3.0 else 0.0 for v in x.ravel().tolist()],
                    dtype=np.float64).reshape(x.shape)


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


@functools.lru_cache(maxsize=256)
def coefficients(in_size: int, in0: float, in1: float, out_size: int, interpolation: str):
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for one axis, vectorised
    with the same double-precision operations in the same order.

    ``in0``, ``in1``: the box along this axis (Pillow passes them as C floats). Returns
    ``(bounds, kk)``: ``bounds[i] = (first source pixel, number of taps)`` (int64, (out, 2))
    and ``kk`` the fixed-point weights (int32, (out, ksize)), zero past each row's taps.
    """
    fn, support = FILTERS[interpolation]
    in0, in1 = np.float32(in0), np.float32(in1)
    scale = float(np.float32(in1 - in0)) / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = float(in0) + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    used = taps[None, :] < xmax[:, None]
    w = np.where(used, fn(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.zeros(out_size)
    for t in range(ksize):  # added in tap order, as C does (adding the unused zeros is exact)
        ww += w[:, t]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    one = float(1 << PRECISION_BITS)
    kk = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int32)
    return np.stack([xmin, np.maximum(xmax, 0)], axis=1), kk


def _resample_8bpc(src, out, hidx, hk, yb, yk):  # pragma: no cover - compiled
    """Pillow's horizontal-then-vertical pass for 8-bit images: ``src`` (h, w * nc) and ``out``
    (oh, ow * nc) uint8, C-contiguous. Horizontal taps flattened over pixels and channels
    (:func:`_flat_taps`): value ``j`` of a row is ``sum_t row[hidx[t, j]] * hk[t, j]``;
    vertical: ``yb``/``yk`` of :func:`coefficients`."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    oh, m = out.shape
    yfirst = yb[0, 0]
    ylast = yb[oh - 1, 0] + yb[oh - 1, 1]
    tmp = np.empty((ylast - yfirst, m), np.int32)
    acc = np.empty(m, np.int32)
    # horizontal pass, only over the source rows that the vertical pass reads
    for r in range(ylast - yfirst):
        row = src[yfirst + r]
        for j in range(m):
            acc[j] = half
        for t in range(hidx.shape[0]):
            it, kt = hidx[t], hk[t]
            for j in range(m):
                acc[j] += np.int32(row[it[j]]) * kt[j]
        trow = tmp[r]
        for j in range(m):
            v = acc[j] >> PRECISION_BITS
            trow[j] = 0 if v < 0 else (255 if v > 255 else v)
    # vertical pass, one output row at a time, contiguous along the row
    for yy in range(oh):
        y0 = yb[yy, 0] - yfirst
        for j in range(m):
            acc[j] = half
        for t in range(yb[yy, 1]):
            k = yk[yy, t]
            trow = tmp[y0 + t]
            for j in range(m):
                acc[j] += trow[j] * k
        orow = out[yy]
        for j in range(m):
            v = acc[j] >> PRECISION_BITS
            orow[j] = 0 if v < 0 else (255 if v > 255 else v)


@functools.lru_cache(maxsize=256)
def _flat_taps(in_size: int, in0: float, in1: float, out_size: int, interpolation: str, nc: int):
    """The horizontal coefficients of :func:`coefficients` laid out per output value (pixel
    and channel): ``(idx, k)``, both (taps, out_size * nc); a row's unused taps read its
    first source value with weight 0."""
    b, kk = coefficients(in_size, in0, in1, out_size, interpolation)
    taps = max(int(b[:, 1].max()), 1)
    t = np.arange(taps)
    src_px = b[:, :1] + t[None, :]  # (out, taps)
    used = t[None, :] < b[:, 1:2]
    src_px = np.where(used, src_px, b[:, :1])
    k = np.where(used, kk[:, :taps], 0).astype(np.int32)
    c = np.arange(nc)
    idx = (src_px.T[:, :, None] * nc + c).reshape(taps, out_size * nc)
    return np.ascontiguousarray(idx, dtype=np.int64), np.ascontiguousarray(np.repeat(k.T, nc, axis=1))


#: Compiled on first use; kept in numba's disk cache (:mod:`visclust._jit`).
_resample_8bpc_jit = numba.njit(nogil=True)(_resample_8bpc)
_jit.cache_on_disk(_resample_8bpc_jit)


def same_as_pillow(h: int, w: int, oh: int, ow: int, interpolation: str) -> bool:
    """Whether :func:`resize_box` computes Pillow's pixels for an (h, w) image resized to
    (oh, ow): a separable filter, and Pillow's horizontal pass first. Pillow 13 runs the
    vertical pass first when the height shrinks by more than twice as many pixels as the
    width; earlier versions never do. Both agree outside that case, which is the only one
    reproduced here (enlargements, such as small images to a network's input, always are)."""
    return interpolation in FILTERS and not (h - oh > 0 and h - oh > 2 * (w - ow))


def resize_box(src: np.ndarray, size: tuple[int, int], box, interpolation: str, out: np.ndarray | None = None):
    """``Image.fromarray(src).resize(size, resample, box=box)`` as a uint8 array, computed
    without Pillow and without the GIL: the same pixels.

    ``src``: (h, w, c) uint8; ``size``: (width, height); ``box``: (left, top, right, bottom)
    in source pixels; ``interpolation``: 'bilinear', 'bicubic' or 'lanczos'. ``out``, if
    given, is filled ((height, width, c) uint8) and returned.
    """
    h, w, c = src.shape
    ow, oh = size
    if not same_as_pillow(h, w, oh, ow, interpolation):
        raise ValueError(f"Pillow resizes {w}x{h} -> {ow}x{oh} ({interpolation}) another way; use Pillow")
    hidx, hk = _flat_taps(w, float(box[0]), float(box[2]), ow, interpolation, c)
    yb, yk = coefficients(h, float(box[1]), float(box[3]), oh, interpolation)
    if out is None:
        out = np.empty((oh, ow, c), np.uint8)
    elif not out.flags.c_contiguous:  # computed contiguous, then copied in
        out[...] = resize_box(src, size, box, interpolation)
        return out
    _resample_8bpc_jit(np.ascontiguousarray(src).reshape(h, w * c), out.reshape(oh, ow * c), hidx, hk, yb, yk)
    return out
