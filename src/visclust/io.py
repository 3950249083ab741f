"""Inputs and outputs at the edge of the pipeline: finding images, decoding them safely,
reading labels and reading/writing assignment CSVs.

Everything read here comes from outside and is treated as untrusted: image decoding is
bounded (decompression bombs are refused before any pixel is decoded) and CSV paths are
only ever data.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .exceptions import ImageReadError, InputError, LabelsError, NoImagesError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
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
        line, relative to the list file, ``#`` starts a comment).

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
        p = os.fspath(item)
        if os.path.isdir(p):
            for found in _walk_images(p):
                add(found)
        elif os.path.splitext(p)[1].lower() in LIST_EXTENSIONS and os.path.isfile(p):
            for found in _read_list_file(p):
                add(found)
        elif os.path.lexists(p):
            # An explicitly named file is taken whatever its extension: decoding decides.
            add(p)
        else:
            raise InputError(f"input '{p}' does not exist; give image files, directories or a .txt list of paths")
    if not out:
        raise NoImagesError(
            "no image files found in the inputs "
            f"({', '.join(map(os.fspath, inputs)) or 'none given'}); "
            f"looked for extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return out


def _walk_images(root: str) -> list[str]:
    found = []
    # followlinks=False: a symlinked directory loop cannot make the walk run forever.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_path(name):
                found.append(os.path.join(dirpath, name))
    return found


def _read_list_file(path: str) -> list[str]:
    base = os.path.dirname(path)
    found = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = line if os.path.isabs(line) else os.path.join(base, line)
            if os.path.isdir(p):
                found.extend(_walk_images(p))
            else:
                found.append(p)
    return found


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike, draft_size: int | None = None):
    """Decode one image as an upright 8-bit RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    path : str or path
    draft_size : int, optional
        Smallest side the caller needs; JPEGs are then decoded at a reduced scale
        (``Image.draft``), which is several times faster for large photos.

    Raises
    ------
    ImageReadError
        With the path and the reason, for anything that is not a decodable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageReadError(
                        f"{p}: image is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb?)"
                    )
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.seek(0)  # first frame of animations
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{p}: refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{p}: not an image Pillow can decode") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{p}: is a directory, not an image") from e
    except PermissionError as e:
        raise ImageReadError(f"{p}: permission denied") from e
    except FileNotFoundError as e:
        raise ImageReadError(f"{p}: file not found (broken symlink?)") from e
    except OSError as e:  # truncated files, symlink loops, I/O errors
        raise ImageReadError(f"{p}: {e.strerror or e}") from e
    except (ValueError, SyntaxError, EOFError, MemoryError, TypeError, IndexError, KeyError) as e:
        # Pillow plugins raise assorted errors on malformed headers.
        raise ImageReadError(f"{p}: malformed image ({type(e).__name__}: {e})") from e


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
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
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


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``path,label`` CSV (header required) into {normalised path: label}."""
    rows = _read_csv(path, required=("path", "label"), what="labels")
    return {_norm(r["path"]): r["label"] for r in rows}


def resolve_labels(spec: str, paths: Sequence[str]) -> list[str]:
    """Labels for ``paths`` from ``spec``: ``'folders'`` or a ``path,label`` CSV file."""
    if spec == "folders":
        return labels_from_folders(paths)
    table = read_labels_csv(spec)
    missing = [p for p in paths if _norm(p) not in table]
    if missing:
        raise LabelsError(
            f"{len(missing)} of {len(paths)} images have no label in {spec} (first: {missing[0]}); "
            "the CSV needs one 'path,label' row per image"
        )
    return [table[_norm(p)] for p in paths]


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


def write_assignments(path: str | os.PathLike, assignments: Assignments) -> None:
    """Write ``path,cluster,confidence`` rows atomically (a crash never leaves half a CSV)."""
    rows = (
        (p, int(c), f"{float(s):.6f}")
        for p, c, s in zip(assignments.paths, assignments.clusters, assignments.confidence)
    )
    write_csv_atomic(path, ASSIGNMENT_HEADER, rows)


def read_assignments(path: str | os.PathLike) -> Assignments:
    rows = _read_csv(path, required=ASSIGNMENT_HEADER, what="assignments")
    try:
        clusters = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
        conf = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{path}: bad value in assignments CSV ({e}); 'cluster' must be an integer and 'confidence' a number") from e
    return Assignments([r["path"] for r in rows], clusters, conf)


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


def _read_csv(path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
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


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)
