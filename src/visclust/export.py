"""Put the images in folders, one per cluster: ``DIR/<cluster>/<file name>``.

Every path in an assignments CSV is untrusted data. Only the *file name* of a source is
used for its destination, cleaned so that it can never name a parent or another folder;
every destination is checked to resolve inside ``DIR``; nothing is ever overwritten or
deleted (a destination is created with ``O_EXCL``, and a name clash gets a ``-1``, ``-2``
... suffix); the originals are only read. What went where is written to
``DIR/export.csv`` (``source,destination,cluster``), merged with the rows of an earlier
export into the same folder, so running the same export twice changes nothing, and the
images of a later ``predict`` can join the folders of the ``fit``.

An export whose clusters differ from an earlier export's into the same folder (after a
refit) would leave those images in two cluster folders. It is refused before anything is
created, unless ``replace=True``: then each such earlier link or copy is removed, but only
while it is still exactly what the export made (a link to that source, or a copy with the
source's bytes), so nothing else is ever deleted.
"""

from __future__ import annotations

import csv
import filecmp
import os
import shutil
from dataclasses import dataclass, field

from .exceptions import InputError
from .io import Assignments, write_csv_atomic

MODES = ("symlink", "copy")
EXPORT_CSV = "export.csv"
EXPORT_HEADER = ("source", "destination", "cluster")
UNASSIGNED_DIR = "unassigned"
_MAX_SUFFIX = 100_000


@dataclass
class ExportResult:
    """What :func:`export_clusters` did.

    ``rows`` holds ``(source, destination, cluster)`` for every exported image (destination
    relative to the export folder); ``missing`` the ``(source, reason)`` of images that were
    not exported; ``renamed`` how many got a suffix because the name was taken; ``reused``
    how many were already in place from an earlier identical export; ``replaced`` how many
    earlier links or copies in another cluster's folder were removed (``replace=True``).
    """

    root: str
    csv_path: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    renamed: int = 0
    reused: int = 0
    replaced: int = 0


def cluster_folder_name(cluster, width: int = 0) -> str:
    """Folder name of a cluster: zero-padded id (sorts in order), ``unassigned`` for -1."""
    try:
        k = int(cluster)
    except (TypeError, ValueError):
        return safe_name(str(cluster), fallback="cluster")
    return UNASSIGNED_DIR if k < 0 else f"{k:0{width}d}"


def safe_name(name: str, fallback: str = "image") -> str:
    """One path component that cannot leave its folder: separators and NUL are replaced,
    ``.``/``..``/empty names become ``fallback``, leading dots are kept off (no hidden or
    parent names), length is capped at 200 bytes."""
    for sep in {"/", "\\", os.sep, os.altsep or "/", "\0"}:
        name = name.replace(sep, "_")
    name = name.strip().lstrip(".")
    if not name:
        return fallback
    while len(name.encode("utf-8", "surrogateescape")) > 200:
        root, ext = os.path.splitext(name)
        name = root[:-1] + ext if len(root) > 1 else name[:-1]
    return name


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _candidates(name: str):
    yield name
    root, ext = os.path.splitext(name)
    for i in range(1, _MAX_SUFFIX):
        yield f"{root}-{i}{ext}"


def _ours(dest: str, source_abs: str) -> bool:
    """Is ``dest`` still what an export of ``source_abs`` made, in either mode?"""
    return _same(dest, source_abs, "symlink") or _same(dest, source_abs, "copy")


def _same(dest: str, source_abs: str, mode: str) -> bool:
    """Is ``dest`` already exactly what this export would create (a rerun)?"""
    try:
        if mode == "symlink":
            return os.path.islink(dest) and os.readlink(dest) == source_abs
        return (not os.path.islink(dest)) and os.path.isfile(dest) and filecmp.cmp(dest, source_abs, shallow=False)
    except OSError:
        return False


def _place(source_abs: str, folder: str, name: str, mode: str) -> tuple[str, bool, bool]:
    """Create ``folder/<name or suffixed name>`` without replacing anything.

    Returns ``(destination, renamed, reused)``.
    """
    for i, candidate in enumerate(_candidates(name)):
        dest = os.path.join(folder, candidate)
        if os.path.lexists(dest):
            if _same(dest, source_abs, mode):
                return dest, i > 0, True
            continue
        try:
            if mode == "symlink":
                os.symlink(source_abs, dest)
            else:
                _copy_exclusive(source_abs, dest)
        except FileExistsError:
            continue  # created by someone else meanwhile: take the next name
        return dest, i > 0, False
    raise InputError(f"{folder}: no free name for {name} after {_MAX_SUFFIX} tries; export into an empty folder")


def _copy_exclusive(source: str, dest: str) -> None:
    # "xb" = O_CREAT|O_EXCL: never truncates an existing file, even one created a moment ago.
    with open(source, "rb") as src, open(dest, "xb") as out:
        try:
            shutil.copyfileobj(src, out, 1024 * 1024)
        except BaseException:
            out.close()
            os.unlink(dest)  # our own partial file
            raise
    shutil.copystat(source, dest)


def _read_previous(csv_path: str) -> list[tuple[str, str, str]] | None:
    """Rows of an earlier export's CSV, or None when the file is not one of ours."""
    try:
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != EXPORT_HEADER:
                return None
            return [tuple(r) for r in reader if len(r) == 3]
    except (OSError, csv.Error):
        return None


def _elsewhere(previous, root: str, root_real: str, planned: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(source, destination as in the CSV, its path)`` for each row of an earlier export
    that put a source of this export in another cluster's folder and is still in place as
    that export made it.

    ``planned`` maps each source (absolute) to the cluster folder it goes to now. The rows
    come from a CSV in the export folder, so they are checked like any untrusted path: a
    destination must be ``<folder>/<clean file name>`` inside the export folder.
    """
    out = []
    for source, dest_rel, _ in previous or []:
        folder = planned.get(source)
        parts = dest_rel.replace(os.sep, "/").split("/")
        if folder is None or len(parts) != 2 or parts[0] == folder or any(
                p != safe_name(p, fallback="") or not p for p in parts):
            continue
        dest = os.path.join(root, *parts)
        if _inside(root_real, os.path.dirname(dest)) and _ours(dest, source):
            out.append((source, dest_rel, dest))
    return out


def export_clusters(assignments: Assignments, to: str | os.PathLike, mode: str = "symlink",
                    replace: bool = False) -> ExportResult:
    """Lay the images of ``assignments`` out as ``to/<cluster>/<file name>``.

    Parameters
    ----------
    assignments : visclust.io.Assignments
        E.g. from :func:`visclust.io.read_assignments`; cluster -1 goes to ``unassigned/``.
    to : str or path
        Export folder, created if needed. Files already there are never replaced.
    mode : {'symlink', 'copy'}, default 'symlink'
        Symbolic links to the originals (absolute paths; no disk space), or copies.
    replace : bool, default False
        An earlier export into ``to`` that put some of these images in other clusters'
        folders (a refit) makes this an error, before anything is created: the images would
        be in two folders. True removes those earlier links or copies first (only while each
        is still a link to its source or a copy with the source's bytes).

    Returns
    -------
    ExportResult
        Also written as ``to/export.csv`` (``source,destination,cluster``).

    Examples
    --------
    >>> from visclust.io import read_assignments
    >>> export_clusters(read_assignments("fit.csv"), "sorted", mode="copy").rows[:1]   # doctest: +SKIP
    [('/photos/cat1.jpg', '03/cat1.jpg', '3')]
    """
    if mode not in MODES:
        raise InputError(f"export mode must be one of {', '.join(MODES)}, got {mode!r}")
    root = os.path.abspath(os.fspath(to))
    if os.path.lexists(root) and not os.path.isdir(root):
        raise InputError(f"export folder {root} exists and is not a folder; choose a new or existing folder")
    os.makedirs(root, exist_ok=True)
    root_real = os.path.realpath(root)
    ids = [int(c) for c in assignments.clusters]
    width = len(str(max([k for k in ids if k >= 0], default=0)))
    result = ExportResult(root, _csv_path(root))
    previous = _read_previous(result.csv_path) if os.path.exists(result.csv_path) else None
    planned = {os.path.abspath(os.fspath(p)): cluster_folder_name(k, width) for p, k in zip(assignments.paths, ids)}
    stale = _elsewhere(previous, root, root_real, planned)
    if stale and not replace:
        source, dest_rel, _ = stale[0]
        raise InputError(f"{len({s for s, _, _ in stale})} of these images are already in another cluster's folder of {root} from an "
                         f"earlier export (e.g. {dest_rel}, now in {planned[source]}/); export into a new folder, or "
                         "add --replace (Python: replace=True) to remove those earlier links or copies first")
    for source, _, dest in stale:  # each checked by _elsewhere a moment ago: still the export's own
        os.unlink(dest)
        result.replaced += 1
        try:
            os.rmdir(os.path.dirname(dest))  # only if that emptied it
        except OSError:
            pass
    gone = {dest_rel for _, dest_rel, _ in stale}
    previous = [r for r in previous or [] if r[1] not in gone]
    made: dict[str, str] = {}
    for source, k in zip(assignments.paths, ids):
        source = os.fspath(source)
        folder_name = cluster_folder_name(k, width)
        folder = made.get(folder_name)
        if folder is None:
            folder = os.path.join(root, folder_name)
            if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
                raise InputError(f"{folder} exists and is not a plain folder (a link or a file); "
                                 "export into a new folder or move it away")
            os.makedirs(folder, exist_ok=True)
            if not _inside(root_real, folder):
                raise InputError(f"{folder} resolves outside the export folder {root}; export into a new folder")
            made[folder_name] = folder
        source_abs = os.path.abspath(source)
        if not os.path.isfile(source_abs):
            result.missing.append((source, "not found" if not os.path.lexists(source_abs) else "not a regular file"))
            continue
        name = safe_name(os.path.basename(source_abs))
        try:
            dest, renamed, reused = _place(source_abs, folder, name, mode)
        except PermissionError as e:
            result.missing.append((source, f"permission denied ({e.filename})"))
            continue
        except OSError as e:
            if mode == "symlink" and getattr(e, "winerror", None) is not None:
                raise InputError(f"cannot create symbolic links here ({e}); use --mode copy") from e
            result.missing.append((source, e.strerror or str(e)))
            continue
        if not _inside(root_real, os.path.dirname(dest)):  # defence in depth; names are already clean
            raise InputError(f"refusing to write {dest}: outside the export folder {root}")
        result.renamed += renamed and not reused
        result.reused += reused
        result.rows.append((source_abs, os.path.relpath(dest, root), str(k)))
    _write_csv(result, previous)
    return result


def _csv_path(root: str) -> str:
    """``root/export.csv``, unless a file of that name is not an earlier export's CSV."""
    for candidate in _candidates(EXPORT_CSV):
        p = os.path.join(root, candidate)
        if not os.path.lexists(p) or (not os.path.islink(p) and _read_previous(p) is not None):
            return p
    raise InputError(f"{root}: no free name for {EXPORT_CSV}")


def _write_csv(result: ExportResult, previous: list) -> None:
    rows = {}
    for r in previous + result.rows:
        rows[r[1]] = r  # one row per destination; the newest wins
    write_csv_atomic(result.csv_path, EXPORT_HEADER, sorted(rows.values(), key=lambda r: r[1]))
