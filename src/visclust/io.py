"""Inputs and outputs at the edge of the pipeline: finding images, decoding them safely,
reading labels and reading/writing assignment CSVs.

Everything read here comes from outside and is treated as untrusted: image decoding is
bounded (decompression bombs are refused before any pixel is decoded) and CSV paths are
only ever data.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import itertools
import os
import stat
import struct
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .exceptions import ImageReadError, InputError, LabelsError, NoImagesError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
     # Listed even when this Pillow cannot decode them: such files are then reported as
     # skipped with the package to install, instead of being silently left out.
     ".avif", ".heic", ".heif"}
)
#: Formats only a plugin package decodes: extension -> the package that registers it.
PLUGIN_FORMATS = {".heic": "pillow-heif", ".heif": "pillow-heif"}
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
#: Images with more pixels than this are refused without being decoded (Pillow's own bomb
#: limit is a warning at 89 Mpx; a 8,000 x 8,000 photo, 64 Mpx, is still accepted).
MAX_IMAGE_PIXELS = 100_000_000

ASSIGNMENT_HEADER = ("path", "cluster", "confidence")


def is_image_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand image files, directories (recursive) and text files listing paths.

    Parameters
    ----------
    inputs : iterable of str or path
        Any mix of image files, directories and list files (``.txt``/``.lst``: one path per
        line, relative to the list file, ``#`` starts a comment); ``'-'`` stands for the
        paths piped on standard input (:func:`stdin_paths`).

    Returns
    -------
    paths : list of str
        Image paths in a stable order (directories sorted), each listed once. Files are not
        opened here: unreadable images are found and reported when decoded.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for item in inputs:
        for found in expand_input(os.fspath(item)):
            add(found)
    if not out:
        raise no_images_error(inputs)
    return out


def check_inputs_exist(inputs) -> None:
    """Raise the error :func:`expand_input` would for an input that does not exist, before
    the slow part of a command (loading the network, reading its weights) rather than after."""
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        p = os.fspath(item)
        if p == STDIN_INPUT:
            stdin_paths()  # nothing piped in: said now, not after the network is loaded
        elif not os.path.lexists(p):
            raise _missing_input(p)


def _missing_input(p: str) -> InputError:
    return InputError(f"input '{p}' does not exist; give image files, directories or a .txt list of paths")


def expand_input(p: str) -> list[str]:
    """The image paths one input stands for (see :func:`collect_inputs`)."""
    if p == STDIN_INPUT:
        return list(stdin_paths())
    if os.path.isdir(p):
        return _walk_images(p)
    if os.path.splitext(p)[1].lower() in LIST_EXTENSIONS and os.path.isfile(p):
        return _read_list_file(p)
    if os.path.lexists(p):
        return [p]  # an explicitly named file is taken whatever its extension: decoding decides
    raise _missing_input(p)


def no_images_error(inputs) -> NoImagesError:
    return NoImagesError(
        "no image files found in the inputs "
        f"({', '.join(map(os.fspath, inputs)) or 'none given'}); "
        f"looked for extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
    )


def _walk_images(root: str) -> list[str]:
    """Image files under ``root``, sorted, following directory symlinks once each.

    A directory is entered only if its (device, inode) was not entered before, so a
    symlink loop (``a/loop -> a``) cannot make the walk run forever or list files twice.
    Anything with an image extension that is not a directory is listed, broken symlinks
    included: decoding reports why it cannot be used.
    """
    entered: set[tuple[int, int]] = set()
    if not _unseen(root, entered):
        return []
    return [f for _key, files in walk_image_groups(root, entered) for f in files]


def dir_key(path: str) -> tuple[int, int] | None:
    """(device, inode) of a directory, the identity :func:`walk_image_groups` deduplicates by."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _unseen(path: str, entered: set) -> bool:
    key = dir_key(path)
    if key is None or key in entered:
        return False
    entered.add(key)
    return True


def walk_image_groups(root: str, entered: set, max_depth: int | None = None):
    """Walk ``root`` top-down (its own key already in ``entered``), yielding
    ``(directory key, sorted image files directly in it)`` per directory entered, in the
    order :func:`collect_inputs` lists them. A subdirectory is entered only if its key is not
    in ``entered`` (which the walk extends). With ``max_depth=0`` only ``root`` itself is
    read, and the subdirectories it would enter are returned by the generator as its value
    (``StopIteration.value``): how a parallel lister hands subtrees to workers."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _unseen(os.path.join(dirpath, d), entered))
        yield dir_key(dirpath), [os.path.join(dirpath, n) for n in sorted(filenames) if is_image_path(n)]
        if max_depth == 0:
            return [os.path.join(dirpath, d) for d in dirnames]
    return []


def _read_list_file(path: str) -> list[str]:
    # utf-8-sig: a byte-order mark (Windows Notepad writes one) would stick to the first path
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        return _listed_paths((line.strip() for line in f), os.path.dirname(path), comments=True)


def _listed_paths(entries, base: str, comments: bool) -> list[str]:
    """The paths a list names: each relative to ``base`` unless absolute, a directory
    standing for its images (recursive); a missing file is kept, to be reported when read."""
    found = []
    for entry in entries:
        if not entry or (comments and entry.startswith("#")):
            continue
        p = entry if os.path.isabs(entry) or not base else os.path.join(base, entry)
        if os.path.isdir(p):
            found.extend(_walk_images(p))
        else:
            found.append(p)
    return found


#: The input that stands for the paths piped on standard input (``find ... | visclust predict M -``).
STDIN_INPUT = "-"
_stdin_cache: list = []


def stdin_paths(stream=None) -> tuple[str, ...]:
    """The image paths piped on standard input: one per line (relative to the current
    directory, directories recursive, as in a list file but without comments), or separated
    by NUL bytes (``find -print0``: names with newlines). Read once; later calls give the
    same paths.

    Raises
    ------
    InputError
        When standard input is a terminal (nothing is piped: reading would wait for typing)
        or lists no path.
    """
    if _stdin_cache:
        return _stdin_cache[0]
    stream = sys.stdin if stream is None else stream
    if stream is None or stream.isatty():
        raise InputError("input '-' reads image paths from standard input, but nothing is piped in; "
                         "pipe them (find photos -name '*.jpg' | visclust ...) or give the paths")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8", "surrogateescape")
    text = data.decode("utf-8-sig", errors="surrogateescape")
    entries = text.split("\0") if "\0" in text else (line.strip() for line in text.splitlines())
    paths = tuple(_listed_paths(entries, "", comments=False))
    if not paths:
        raise InputError("input '-': standard input listed no paths")
    _stdin_cache.append(paths)
    return paths


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike, draft_size: int | None = None):
    """Decode one image as an upright 8-bit RGB :class:`PIL.Image.Image`.

    Untrusted files are handled so that none can hang, exhaust memory or crash a run:
    only regular files are opened (a FIFO or device named ``x.jpg`` would block or never
    end); the pixel count is checked from the header, before any pixel is decoded, against
    :data:`MAX_IMAGE_PIXELS`; animations give their first frame; EXIF orientation is
    applied; 16-bit, float, palette, alpha and CMYK images become plain RGB (alpha over
    white).

    Parameters
    ----------
    path : str or path
    draft_size : int, optional
        Smallest side the caller needs; JPEGs are then decoded at a reduced scale
        (``Image.draft``), which is several times faster for large photos.

    Returns
    -------
    PIL.Image.Image
        Mode ``'RGB'``, upright.

    Raises
    ------
    ImageReadError
        With the path and the reason, for anything that is not a decodable image. No other
        exception escapes for a bad file.
    """
    return _load(path, draft_size, as_array=False)


def load_image_array(path: str | os.PathLike, draft_size: int | None = None) -> np.ndarray:
    """:func:`load_image` as an (h, w, 3) uint8 array (the same pixels, the same checks and
    errors): plain JPEGs come straight from the decoder, with no Pillow image in between."""
    return _load(path, draft_size, as_array=True)


def _load(path, draft_size: int | None, as_array: bool):
    p = os.fspath(path)
    size = _check_regular_file(p)
    if size <= FAST_JPEG_MAX_BYTES:
        img = _load_plain_jpeg(p, draft_size, as_array)
        if img is not None:
            return img
    img = _load_with_pil(p, size, draft_size)
    return np.asarray(img) if as_array else img


def image_short_side(path: str | os.PathLike) -> int | None:
    """The shorter side in pixels, from the file's header only (nothing is decoded); None
    for anything that is not a readable image (the caller only samples sizes)."""
    from PIL import Image

    p = os.fspath(path)
    try:
        _check_regular_file(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as img:
                return int(min(img.size)) or None
    except Exception:  # noqa: BLE001 - an unreadable file only drops out of the sample
        return None


def load_image_bytes(data: bytes, name: str = "image", draft_size: int | None = None) -> np.ndarray:
    """An image file's bytes (an upload) as :func:`load_image_array` reads the file: the same
    checks (the pixel limit from the header, before decoding), first frame, EXIF orientation,
    plain RGB; errors are :class:`~visclust.exceptions.ImageReadError` naming ``name``."""
    return np.asarray(_load_with_pil(name, len(data), draft_size, source=io.BytesIO(data)))


def _load_with_pil(p: str, size: int, draft_size: int | None, source=None):
    """:func:`load_image` through Pillow alone (every format, every JPEG); ``source``: a file
    object to read instead of the file ``p`` (which then only names it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    ext = os.path.splitext(p)[1].lower()
    if ext in PLUGIN_FORMATS:
        _register_plugin(ext)
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that counts; Pillow's warning (89 Mpx) is not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Plugins warn about each oddity of a damaged file (corrupt EXIF, short TIFF
            # tags); a run over a million files reports what it skips, not those.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            with Image.open(p if source is None else source) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageReadError(_too_large(p, w, h))
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.seek(0)  # first frame of animations
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        # Pillow refuses > 2 x Image.MAX_IMAGE_PIXELS at open, before our own check.
        raise ImageReadError(f"{p}: over the {MAX_IMAGE_PIXELS:,}-pixel limit; refused without decoding "
                             f"(decompression bomb?): {e}") from e
    except UnidentifiedImageError as e:
        hint = ""
        if ext in PLUGIN_FORMATS:
            hint = f"; {ext} files need the {PLUGIN_FORMATS[ext]} package (pip install {PLUGIN_FORMATS[ext]})"
        elif size == 0:
            hint = " (the file is empty)"
        raise ImageReadError(f"{p}: not an image Pillow can decode{hint}") from e
    except (FileNotFoundError, PermissionError) as e:  # changed since _check_regular_file, or no read permission
        raise ImageReadError(_os_error_reason(p, e)) from e
    except OSError as e:  # truncated files, I/O errors, errors of decoders in C
        raise ImageReadError(f"{p}: damaged or truncated image ({e.strerror or e})") from e
    except (ValueError, SyntaxError, EOFError, MemoryError, TypeError, IndexError, KeyError, ArithmeticError,
            AssertionError, RecursionError, struct.error, zlib.error) as e:
        # Pillow plugins raise assorted errors on malformed headers and chunks.
        raise ImageReadError(f"{p}: malformed image ({type(e).__name__}: {e})") from e


#: JPEGs up to this size may take the fast path of :func:`_load_plain_jpeg`.
FAST_JPEG_MAX_BYTES = 32 << 20
#: Bytes read to look at a JPEG's header; a header longer than this goes to Pillow.
JPEG_HEADER_BYTES = 64 << 10
#: Markers a "plain" JPEG may hold before its first scan: SOF0-2 (baseline, extended,
#: progressive), DHT, SOI, SOS, DQT, DRI, APP0 (JFIF), APP2 (ICC profile, checked below), COM.
#: Anything else (EXIF or XMP in APP1, which may rotate the image; Adobe APP14; arithmetic
#: coding; 12-bit) goes through Pillow.
_PLAIN_JPEG_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC4, 0xDA, 0xDB, 0xDD, 0xE0, 0xE2, 0xFE})


_JPEG_SOI = b"\xff\xd8\xff"


def _simplejpeg():
    """The ``simplejpeg`` module, or None when it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a colour or greyscale JPEG within :data:`MAX_IMAGE_PIXELS`, read
    from its header alone (``data`` may stop after it); None for anything else (not a JPEG,
    CMYK, a damaged header, too many pixels). Uses ``simplejpeg``'s header parser (1-3 us),
    Pillow's ``open`` when simplejpeg is not installed."""
    if data[:3] != _JPEG_SOI:
        return None
    sj = _simplejpeg()
    if sj is not None:
        try:
            h, w, colorspace, _ = sj.decode_jpeg_header(data)
        except ValueError:
            return None
        ok = colorspace in ("YCbCr", "Gray")
    else:
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                (w, h), ok = img.size, img.format == "JPEG" and img.mode in ("RGB", "L")
        except Exception:
            return None
    return (w, h) if ok and w * h <= MAX_IMAGE_PIXELS else None


def _plain_jpeg_header(data: bytes) -> bool:
    """True when ``data`` is a JPEG whose header holds only :data:`_PLAIN_JPEG_MARKERS`."""
    if data[:3] != _JPEG_SOI:
        return False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker not in _PLAIN_JPEG_MARKERS:
            return False
        if marker == 0xDA:
            return True
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE2 and data[i + 4:i + 16] != b"ICC_PROFILE\x00":  # APP2 of MPO files
            return False
        i += 2 + length
    return False


def _load_plain_jpeg(p: str, draft_size: int | None, as_array: bool = False):
    """Decode a plain JPEG with libjpeg-turbo through ``simplejpeg`` (a PIL image, or the
    decoded array with ``as_array``), or return None.

    The same pixels as Pillow's path (same library, same IDCT and upsampling; checked by the
    tests), opened and decoded in about a quarter of Pillow's time on small images (28
    against 110 us for a CIFAR JPEG: Pillow parses the file in Python, under the GIL). Only
    files that Pillow would decode at full scale with nothing more to do take this path: no
    EXIF/XMP (orientation), no CMYK, no ``draft()`` reduction, within
    :data:`MAX_IMAGE_PIXELS`; a file the decoder finds anything wrong with (``strict``: even
    a warning) goes back to Pillow, whose error is the one reported.
    """
    sj = _simplejpeg()
    if sj is None:
        return None
    try:
        with open(p, "rb") as f:
            # the header first: any other file (a PNG, a photo with EXIF) is left to Pillow
            # after one small read, not after reading it whole
            data = f.read(JPEG_HEADER_BYTES)
            size = jpeg_header_size(data) if _plain_jpeg_header(data) else None
            if size is None:
                return None
            if draft_size and min(size[0] // draft_size, size[1] // draft_size) >= 2:
                return None  # Pillow's draft() decodes at 1/2, 1/4 or 1/8 scale
            data += f.read(FAST_JPEG_MAX_BYTES)
        a = sj.decode_jpeg(data, colorspace="RGB")
    except (OSError, ValueError):
        return None
    if as_array:
        return a
    from PIL import Image

    return Image.fromarray(a, "RGB")


def _check_regular_file(p: str) -> int:
    """Refuse what cannot be an image file without opening it (opening a FIFO blocks).

    Returns the file's size in bytes."""
    try:
        st = os.stat(p)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(f"{p}: is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"{p}: not a regular file (a FIFO, socket or device); only image files are read")
        return st.st_size
    except ImageReadError:
        raise
    except OSError as e:
        raise ImageReadError(_os_error_reason(p, e)) from e


def _os_error_reason(p: str, e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return f"{p}: " + ("broken symlink: its target does not exist" if os.path.islink(p) else "file not found")
    if isinstance(e, PermissionError):
        return f"{p}: permission denied; make the file readable (chmod +r) or leave it out"
    if e.errno == errno.ELOOP:
        return f"{p}: symlink loop (too many levels of symbolic links)"
    return f"{p}: cannot be read ({e.strerror or e})"


def _too_many_pixels(what: str, w: int, h: int) -> str:
    return f"{what}: {w}x{h} = {w * h:,} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit; downscale it to use it"


def _too_large(p: str, w: int, h: int) -> str:
    return (f"{p}: image is {w}x{h} = {w * h:,} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit; "
            "refused without decoding (decompression bomb?); downscale it to use it")


def _register_plugin(ext: str) -> None:
    """Register an optional Pillow plugin for ``ext`` when its package is installed."""
    if PLUGIN_FORMATS.get(ext) == "pillow-heif":
        try:
            import pillow_heif
        except ImportError:
            return
        pillow_heif.register_heif_opener()


def is_image_object(obj) -> bool:
    """Whether ``obj`` is an image in memory (a :class:`PIL.Image.Image` or a numpy array),
    not a path."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind not in "USO"  # an array of paths is paths
    PIL_Image = sys.modules.get("PIL.Image")  # a PIL image exists only if Pillow is loaded
    return PIL_Image is not None and isinstance(obj, PIL_Image.Image)


def check_image_object(obj, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` of an image in memory that :func:`image_object_array` can use,
    checked without converting it: a :class:`PIL.Image.Image`, or a uint8 array of shape
    (h, w), (h, w, 1), (h, w, 3) or (h, w, 4).

    Raises
    ------
    InputError
        One line naming ``what``, for anything else (a float array, a channels-first array,
        an empty image, an image over :data:`MAX_IMAGE_PIXELS`).
    """
    if isinstance(obj, np.ndarray):
        a = obj
        if a.dtype != np.uint8:
            raise InputError(f"{what}: a {a.dtype} array; give uint8 pixels 0-255 "
                             "(e.g. (a * 255).round().astype(np.uint8) for floats in [0, 1])")
        if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
            raise InputError(f"{what}: shape {a.shape} looks channels-first; give (height, width, channels) "
                             "(e.g. a.transpose(1, 2, 0))")
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
            raise InputError(f"{what}: shape {a.shape}; give (height, width), (height, width, 3) "
                             "or (height, width, 4) uint8 pixels (n grey images: a[..., None], an "
                             "(n, height, width, 1) array)")
        h, w = a.shape[:2]
    elif is_image_object(obj):
        w, h = obj.size
    else:
        raise InputError(f"{what}: a {type(obj).__name__}; give a PIL image or a numpy uint8 array "
                         "(or a path, for files)")
    if h == 0 or w == 0:
        raise InputError(f"{what}: an empty image ({w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(_too_many_pixels(what, w, h))
    return int(w), int(h)


def image_object_array(obj, what: str = "image") -> np.ndarray:
    """An image in memory as an upright (h, w, 3) uint8 RGB array, as :func:`load_image_array`
    makes from a file: a :class:`PIL.Image.Image` of any mode (EXIF orientation applied,
    alpha over white, 16-bit and float scaled), or a uint8 array of shape (h, w), (h, w, 1),
    (h, w, 3) or (h, w, 4) (RGBA: alpha over white). The caller's object is not changed.

    Raises
    ------
    InputError
        As :func:`check_image_object`, or for a lazily opened image that cannot be decoded.
    """
    check_image_object(obj, what)
    if isinstance(obj, np.ndarray):
        a = obj
        if a.ndim == 2 or a.shape[-1] == 1:
            return np.ascontiguousarray(np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2))
        if a.shape[-1] == 4:  # over white, as an RGBA file is
            from PIL import Image

            return np.asarray(_to_rgb(Image.fromarray(np.ascontiguousarray(a), "RGBA")))
        return np.ascontiguousarray(a)
    from PIL import ImageOps

    try:
        return np.asarray(_to_rgb(ImageOps.exif_transpose(obj)))  # a new image: the caller's stays as it is
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a lazily opened image, damaged
        raise InputError(f"{what}: damaged or unreadable image ({type(e).__name__}: {e})") from e


def _to_rgb(img):
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.zeros_like(a) if hi <= lo else (np.where(finite, a, lo) - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- labels


def labels_from_folders(paths: Sequence[str]) -> list[str]:
    """The class of each image is the name of its parent directory."""
    return [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]


def _label_table(rows, base: str | None = None) -> dict[str, str]:
    """{normalised path: label}; relative paths taken relative to ``base`` (default: the
    current directory)."""
    return {_norm(r["path"] if base is None else os.path.join(base, r["path"])): r["label"] for r in rows}


def resolve_labels(spec: str, paths: Sequence[str], allow_missing: bool = False) -> list:
    """Labels for ``paths`` from ``spec``: ``'folders'`` or a ``path,label`` CSV file.

    With ``allow_missing`` an image the CSV does not name gets ``None`` (e.g. to score only
    the images someone labelled); an error either way when it names none of them."""
    if spec == "folders":
        return labels_from_folders(paths)
    rows = _read_csv(spec, required=("path", "label"), what="labels")
    table = _label_table(rows)
    missing = [p for p in paths if _norm(p) not in table]
    if missing and len(missing) == len(paths) and spec != "-":
        # A CSV kept beside the images often names them relative to its own folder.
        beside = _label_table(rows, base=os.path.dirname(os.path.abspath(spec)))
        if any(_norm(p) in beside for p in paths):
            table, missing = beside, [p for p in paths if _norm(p) not in beside]
    if missing and len(missing) == len(paths):
        raise LabelsError(
            f"none of the {len(paths)} images has a label in {spec} (first: {missing[0]}); its 'path' column must "
            "name the same files (relative to the current directory or to the CSV's folder, or absolute)"
        )
    if missing and not allow_missing:
        raise LabelsError(
            f"{len(missing)} of {len(paths)} images have no label in {spec} (first: {missing[0]}); "
            "the CSV needs one 'path,label' row per image"
        )
    return [table.get(_norm(p)) for p in paths]


def _norm(p: str) -> str:
    return os.path.normcase(os.path.abspath(p))


# --------------------------------------------------------------------------- assignments


@dataclass
class Assignments:
    """One row per image: which cluster it went to and how sure the model is.

    ``cluster`` is -1 for an image rejected by the confidence threshold or marked as noise.
    """

    paths: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _assignment_rows(assignments: Assignments):
    return ((p, int(c), f"{float(s):.6f}")
            for p, c, s in zip(assignments.paths, assignments.clusters, assignments.confidence))


def write_assignments(path: str | os.PathLike, assignments: Assignments) -> None:
    """Write ``path,cluster,confidence`` rows atomically (a crash never leaves half a CSV)."""
    write_csv_atomic(path, ASSIGNMENT_HEADER, _assignment_rows(assignments))


def write_assignments_to(stream, assignments: Assignments) -> None:
    """The same rows on an open text stream (standard output), in UTF-8 with file names'
    bytes unchanged (``surrogateescape``) whatever the stream's own encoding."""
    stream.flush()
    with _utf8_view(stream) as out:
        w = csv.writer(out)
        w.writerow(ASSIGNMENT_HEADER)
        w.writerows(_assignment_rows(assignments))


def read_assignments(path: str | os.PathLike) -> Assignments:
    rows = _read_csv(path, required=ASSIGNMENT_HEADER, what="assignments")
    try:
        clusters = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
        conf = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{path}: bad value in assignments CSV ({e}); 'cluster' must be an integer and 'confidence' a number") from e
    return Assignments([r["path"] for r in rows], clusters, conf)


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV so that ``path`` holds either its old content or the whole new file.

    Paths are written byte for byte (``surrogateescape``): a file name that is not valid
    UTF-8 survives into the CSV and reads back as the same name.

    Raises
    ------
    OSError
        Naming ``path`` (``filename``) when the disk is full or the folder not writable; the
        file at ``path`` is then unchanged.
    """
    with atomic_output(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one step.

    A crash, ``kill -9`` or full disk part-way leaves the old ``path`` untouched (at worst a
    ``.<name>.tmp-<pid>-*`` file beside it, which no reader looks at and the next write of
    ``path`` removes once that process is gone). The new file gets the usual
    permissions (``0666`` minus the umask), not the private ones of a temporary file.

    Raises
    ------
    OSError
        With ``filename`` set to ``path`` and a message saying what to do, for any failure
        to create, write or rename the file (disk full, read-only folder, ...).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp-"
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        _remove_stale_temporaries(directory, prefix)
        fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", dir=directory)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(directory)
    except OSError as e:
        raise _write_error(e, path) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_error(e: OSError, path: str) -> OSError:
    """``e`` as an OSError naming ``path`` with a message that says what to do."""
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
            errno.EFBIG: "the file is larger than this system allows here; write elsewhere",
            errno.EROFS: "the file system is read-only; write elsewhere",
            errno.EACCES: "the folder is not writable; write elsewhere",
            errno.EISDIR: "give a file name"}.get(e.errno, "check the output path")
    return OSError(e.errno, f"{e.strerror or e} while writing; {hint}", path)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after the work: can ``path`` be written? Its folder is made if needed
    (as :func:`atomic_output` would) and a temporary file created and removed there.

    Raises the OSError :func:`atomic_output` would raise at the end (a folder that does not
    exist and cannot be made, is not writable, is on a read-only file system), or one for a
    ``path`` that is a folder.
    """
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _write_error(e, path) from e


@contextlib.contextmanager
def work_folder(prefix: str):
    """A private temporary folder, ``<temp>/<prefix><pid>-*``, deleted on leaving the block.

    A process killed inside the block (``kill -9``, the out-of-memory killer) cannot delete
    its folder; the next ``work_folder`` of the same ``prefix``, in any process, deletes the
    folders of processes that no longer run, so such leftovers do not pile up, and those
    that older versions named without a pid once a day old (:data:`UNNAMED_STALE_SECONDS`).
    """
    root = tempfile.gettempdir()
    _remove_stale_temporaries(root, prefix, unnamed_after=UNNAMED_STALE_SECONDS)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=root) as tmp:
        yield tmp


#: ``work_folder`` folders named without a process id (``<prefix><random>``: visclust named
#: them so before 2026-12-06, so none can say whether its writer runs) are taken as left by a
#: killed fit, and deleted, once untouched for this long.
UNNAMED_STALE_SECONDS = 24 * 3600


def _remove_stale_temporaries(directory: str, prefix: str, unnamed_after: float | None = None) -> None:
    """Delete ``prefix<pid>-*`` files or folders whose writer no longer runs (left by ``kill -9``),
    and, given ``unnamed_after`` (seconds), ``prefix*`` ones with no pid in their name that
    were last modified longer ago than that."""
    import shutil

    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        pid, sep, _ = entry.name[len(prefix):].partition("-")
        if sep and pid.isdigit():
            stale = int(pid) != os.getpid() and not _process_exists(int(pid))
        else:
            stale = unnamed_after is not None and _age(entry, now) > unnamed_after
        if stale:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def _age(entry: os.DirEntry, now: float) -> float:
    """Seconds since ``entry`` was last modified (0 when it cannot be read: keep it)."""
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable (a power cut after replace() keeps the new file).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _utf8_view(stream):
    """A text stream (stdin, stdout) as UTF-8 with file names' bytes kept (``surrogateescape``),
    as visclust's CSV files are, whatever its own encoding; flushed and left open afterwards."""
    f = io.TextIOWrapper(stream.buffer, encoding="utf-8", errors="surrogateescape", newline="")
    try:
        yield f
        f.flush()
    finally:
        f.detach()


#: Separators a spreadsheet may write instead of commas (Excel in locales whose decimal mark is a comma).
_OTHER_SEPARATORS = (";", "\t")


def _read_csv(path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV file; ``"-"`` reads standard input (``visclust predict ... | visclust
    evaluate --assignments -``).

    Files saved by spreadsheets read too: a UTF-8 byte-order mark is dropped, column names are
    compared without case or surrounding spaces (``Path, Label``), and a header line without
    a comma but with semicolons or tabs sets that separator."""
    stdin = str(path) == "-"
    if stdin:
        path = "standard input"
    try:
        with (_utf8_view(sys.stdin) if stdin else open(path, newline="", encoding="utf-8", errors="surrogateescape")) as f:
            first = f.readline()
            sep = next((c for c in _OTHER_SEPARATORS if "," not in first and c in first), ",")
            reader = csv.DictReader(itertools.chain([first], f), delimiter=sep)
            header = reader.fieldnames or []
            if header:
                reader.fieldnames = header = [h.lstrip("\ufeff").strip().lower() for h in header]
            if not header:
                raise InputError(f"{path} is empty; expected a CSV of {what} with the header '{','.join(required)}'")
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(
                    f"{path}: {what} CSV lacks column(s) {', '.join(missing)}; expected a header "
                    f"'{','.join(required)}'"
                )
            return list(reader)
    except FileNotFoundError as e:
        raise InputError(f"{what} file '{path}' does not exist") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e
