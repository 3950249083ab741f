"""Small images for the report: one base64 JPEG per montage thumbnail, and one atlas (a grid
of tiny thumbnails in a single JPEG) for the 2-D map's hover previews.

A 32x32 JPEG carries ~600 bytes of headers for ~500 bytes of picture, so the thousands of
map previews share one file; the few dozen montage thumbnails per cluster stay separate
``<img>`` elements so each can carry its own path as a tooltip.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from ..exceptions import ImageReadError
from ..io import load_image


def _fit_into(img, size: int):
    """Downscale (never upscale) so the longer side is at most ``size``."""
    from PIL import Image

    w, h = img.size
    scale = size / max(w, h)
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)
    return img


def _jpeg_data_uri(img, quality: int) -> str:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uris(paths: Sequence[str], size: int = 96, quality: int = 80) -> dict[str, str | None]:
    """A JPEG data URI per path (``None`` when the file can no longer be decoded)."""
    out: dict[str, str | None] = {}
    for p in paths:
        if p in out:
            continue
        try:
            out[p] = _jpeg_data_uri(_fit_into(load_image(p, draft_size=size), size), quality)
        except ImageReadError:
            out[p] = None
    return out


def atlas_uri(paths: Sequence[str], cell: int = 40, columns: int = 64, quality: int = 70) -> tuple[str | None, list[bool]]:
    """Tile thumbnails of ``paths`` row by row into one JPEG of ``columns`` x rows cells.

    Returns the data URI (``None`` when there is nothing to tile) and, per path, whether its
    image could be decoded (an undecodable file leaves a blank cell).
    """
    from PIL import Image

    if not len(paths):
        return None, []
    columns = max(1, min(columns, len(paths)))
    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), (238, 238, 238))
    ok = []
    for i, p in enumerate(paths):
        try:
            img = _fit_into(load_image(p, draft_size=cell), cell)
        except ImageReadError:
            ok.append(False)
            continue
        x, y = (i % columns) * cell, (i // columns) * cell
        sheet.paste(img, (x + (cell - img.size[0]) // 2, y + (cell - img.size[1]) // 2))
        ok.append(True)
    return _jpeg_data_uri(sheet, quality), ok


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def pick_sample(n: int, max_n: int, random_state: int = 0, must: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of at most ``max_n`` of ``n`` rows, uniformly at random, keeping ``must``."""
    if n <= max_n:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    keep = np.zeros(n, bool)
    if must is not None and len(must):
        keep[np.asarray(must)[: max_n]] = True
    rest = np.flatnonzero(~keep)
    need = max_n - int(keep.sum())
    if need > 0:
        keep[rng.choice(rest, need, replace=False)] = True
    return np.flatnonzero(keep)
