"""visclust.io: finding images, atomic writes, CSV paths as data. (Decoding of every bad
image case is in tests/robustness/test_bad_images.py.)"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from visclust.exceptions import ImageReadError, InputError, NoImagesError
from visclust.io import (Assignments, atomic_output, collect_inputs, load_image, read_assignments, work_folder,
                         write_assignments, write_csv_atomic)


def png(path, color=(10, 200, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def test_directory_symlinks_are_followed_once_and_loops_end(tmp_path):
    png(tmp_path / "photos" / "a.png")
    png(tmp_path / "photos" / "sub" / "b.png")
    png(tmp_path / "elsewhere" / "c.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "photos" / "linked")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "sub" / "loop")  # back up: a cycle
    found = collect_inputs([tmp_path / "photos"])
    assert [os.path.relpath(p, tmp_path / "photos") for p in found] == ["a.png", "linked/c.png", "sub/b.png"]


def test_directory_named_like_an_image_is_walked_not_decoded(tmp_path):
    png(tmp_path / "x.jpg" / "inside.png")
    assert collect_inputs([tmp_path]) == [str(tmp_path / "x.jpg" / "inside.png")]
    with pytest.raises(ImageReadError, match="is a directory"):
        load_image(tmp_path / "x.jpg")


def test_heic_is_listed_and_skipped_with_the_package_to_install(tmp_path):
    (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 16)
    assert collect_inputs([tmp_path]) == [str(tmp_path / "phone.heic")]
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        with pytest.raises(ImageReadError, match="pip install pillow-heif"):
            load_image(tmp_path / "phone.heic")
    else:
        with pytest.raises(ImageReadError):  # a header only: undecodable either way
            load_image(tmp_path / "phone.heic")


def test_missing_input_and_no_images_say_what_to_give(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        collect_inputs([tmp_path / "nope"])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(NoImagesError, match="looked for extensions"):
        collect_inputs([tmp_path])


def test_non_utf8_names_round_trip_through_the_csv(tmp_path):
    name = os.fsdecode(b"\xff\xfe-photo.png")
    png(tmp_path / "ok.png")
    with open(os.path.join(os.fsencode(tmp_path), os.fsencode(name)), "wb") as f:
        f.write((tmp_path / "ok.png").read_bytes())
    paths = collect_inputs([tmp_path])
    assert os.path.join(str(tmp_path), name) in paths
    write_assignments(tmp_path / "a.csv", Assignments(paths, np.array([0, 1]), np.array([0.5, 1.0])))
    assert b"\xff\xfe-photo.png" in (tmp_path / "a.csv").read_bytes()  # the name's own bytes
    back = read_assignments(tmp_path / "a.csv")
    assert back.paths == paths and load_image(back.paths[paths.index(os.path.join(str(tmp_path), name))]).size == (8, 8)


def test_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    target = tmp_path / "a.csv"
    write_csv_atomic(target, ("path",), [("old",)])
    before = target.read_bytes()

    def rows():
        yield ("new",)
        raise OSError(28, "No space left on device")  # as a full disk fails a write

    with pytest.raises(OSError, match="No space left on device while writing; free some space") as e:
        write_csv_atomic(target, ("path",), rows())
    assert e.value.filename == str(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["a.csv"]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.bin"]


def test_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / f".a.csv.tmp-{2**22 + 12345}-x"  # above any pid_max: no such process
    alive = tmp_path / f".a.csv.tmp-{os.getppid()}-y"
    other = tmp_path / f".b.csv.tmp-{2**22 + 12345}-z"
    for p in (dead, alive, other):
        p.write_text("partial")
    write_csv_atomic(tmp_path / "a.csv", ("path",), [("x",)])
    assert sorted(os.listdir(tmp_path)) == sorted(["a.csv", alive.name, other.name])


def test_work_folders_of_killed_processes_are_removed_by_the_next_one(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"visclust-umap-{2**22 + 12345}-x"  # above any pid_max: no such process
    alive = tmp_path / f"visclust-umap-{os.getppid()}-y"
    other = tmp_path / f"visclust-copies-{2**22 + 12345}-z"
    # named as versions before 2026-12-06 named them, without a pid: removed once a day old
    unnamed_old, unnamed_new = tmp_path / "visclust-umap-k3x_9q2a", tmp_path / "visclust-umap-7f2kq0zz"
    for p in (dead, alive, other, unnamed_old, unnamed_new):
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "X.npy").write_bytes(b"rows")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(unnamed_old, (two_days_ago, two_days_ago))
    kept = [alive.name, other.name, unnamed_new.name]
    with work_folder("visclust-umap-") as tmp:
        assert os.path.basename(tmp).startswith(f"visclust-umap-{os.getpid()}-") and os.path.isdir(tmp)
        assert sorted(os.listdir(tmp_path)) == sorted(kept + [os.path.basename(tmp)])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_written_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        write_csv_atomic(tmp_path / "a.csv", ("path",), [])
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "a.csv").st_mode & 0o777 == 0o640


def test_float_image_with_nan_and_inf_is_scaled_from_its_finite_range(tmp_path):
    a = np.array([[0.0, 0.5, 1.0, np.nan, np.inf, -np.inf]], np.float32)
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    got = np.asarray(load_image(tmp_path / "f.tif"))[0, :, 0]
    assert got.tolist() == [0, 128, 255, 0, 0, 0]


def _jpeg_variants(root):
    """(name, path, fast) for JPEGs of every kind the fast path takes, and some it must not."""
    import io as _io

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((5, 5, 1), np.uint8))
    img = Image.fromarray(smooth[:57, :77])  # odd sizes: partial MCUs at the edges
    out = []

    def save(name, fast, image=img, **kw):
        p = root / f"{name}.jpg"
        image.save(p, "JPEG", **kw)
        out.append((name, p, fast))

    for q in (50, 95):
        save(f"q{q}-420", True, quality=q)
    save("444", True, subsampling=0, quality=90)
    save("422", True, subsampling=1, quality=90)
    save("progressive", True, progressive=True, quality=80)
    save("restart-markers", True, quality=80, restart_marker_blocks=1)
    save("gray", True, image=img.convert("L"), quality=85)
    save("icc", True, quality=85, icc_profile=b"\0" * 300)
    save("header-over-64k", False, quality=85, icc_profile=b"\0" * 70_000)  # read no further: Pillow's
    save("comment", True, quality=85, comment=b"hello")
    save("big-for-draft", False, image=img.resize((600, 500)), quality=85)  # draft() reduces it
    exif = Image.Exif()
    exif[0x0112] = 1
    save("exif", False, quality=85, exif=exif)
    save("cmyk", False, image=img.convert("CMYK"), quality=85)
    b = _io.BytesIO()
    img.save(b, "JPEG", quality=85)
    (root / "truncated.jpg").write_bytes(b.getvalue()[:-200])
    out.append(("truncated", root / "truncated.jpg", False))
    return out


def test_fast_jpeg_path_gives_pillows_pixels_and_falls_back_for_the_rest(tmp_path):
    pytest.importorskip("simplejpeg")
    from visclust.io import _load_plain_jpeg, _load_with_pil

    for name, p, fast in _jpeg_variants(tmp_path):
        size = os.path.getsize(p)
        got = _load_plain_jpeg(str(p), 232)
        assert (got is not None) == fast, name
        try:
            ref = _load_with_pil(str(p), size, 232)
        except ImageReadError:
            assert name == "truncated"
            with pytest.raises(ImageReadError, match="truncated"):
                load_image(p, draft_size=232)
            continue
        img = load_image(p, draft_size=232)
        assert img.mode == "RGB" and img.size == ref.size, name
        assert np.array_equal(np.asarray(img), np.asarray(ref)), name


def test_fast_jpeg_path_matches_pillow_on_real_files(cifar_test_dir, shared):
    pytest.importorskip("simplejpeg")
    from visclust.io import _load_plain_jpeg, _load_with_pil

    files = sorted(cifar_test_dir.rglob("*.jpg"))[::50] + sorted((shared / "data/photos").glob("*"))
    taken = 0
    for p in files:
        fast = _load_plain_jpeg(str(p), 232)
        if fast is None:
            continue
        taken += 1
        ref = _load_with_pil(str(p), os.path.getsize(p), 232)
        assert np.array_equal(np.asarray(fast), np.asarray(ref)), p
    assert taken >= 200  # every CIFAR file is a plain JPEG


def test_fast_jpeg_path_survives_damaged_headers(tmp_path):
    """Bytes flipped anywhere in a plain JPEG: the fast path decodes it, or hands it to Pillow
    (None); it never raises or crashes."""
    pytest.importorskip("simplejpeg")
    from visclust.io import _load_plain_jpeg, _load_with_pil

    p = tmp_path / "ok.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(p, quality=90)
    good = p.read_bytes()
    rng = np.random.default_rng(2)
    bad = tmp_path / "bad.jpg"
    outcomes = set()
    for i in range(400):
        data = bytearray(good)
        for pos in rng.integers(2, min(len(data), 700), size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(data[: len(data) - int(rng.integers(0, 2)) * int(rng.integers(1, 300))]))
        img = _load_plain_jpeg(str(bad), 232)
        outcomes.add(img is None)
        if img is not None:
            assert img.mode == "RGB" and img.size == (40, 24)
            try:
                ref = _load_with_pil(str(bad), bad.stat().st_size, 232)
            except ImageReadError:
                continue  # stricter Pillow: the fast path is the more lenient reader here
            assert np.array_equal(np.asarray(img), np.asarray(ref))
    assert outcomes == {True, False}  # both kinds occurred, so both were exercised


def test_an_empty_assignments_csv_or_stdin_says_it_is_empty(tmp_path, monkeypatch):
    import io
    import sys

    (tmp_path / "a.csv").write_text("")
    with pytest.raises(InputError, match=r"a\.csv is empty; expected a CSV of assignments with the header 'path,cluster,confidence'"):
        read_assignments(tmp_path / "a.csv")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(InputError, match="^standard input is empty"):
        read_assignments("-")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"path,cluster,confidence\nx\xff.png,2,0.5\n")))
    a = read_assignments("-")  # a pipe from `visclust predict`: the same rows, a non-UTF-8 name's bytes kept
    assert a.paths == ["x\udcff.png"] and a.clusters.tolist() == [2] and a.confidence.tolist() == [0.5]


def test_assignments_on_stdout_keep_a_non_utf8_names_bytes_whatever_the_streams_encoding():
    import io

    from visclust.io import write_assignments_to

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")  # e.g. LANG=C
    stream.write("before\n")
    write_assignments_to(stream, Assignments(["x\udcff.png", "é.png"], np.array([2, 0]), np.array([0.5, 1.0])))
    assert not stream.closed
    assert raw.getvalue() == b"before\npath,cluster,confidence\r\nx\xff.png,2,0.500000\r\n\xc3\xa9.png,0,1.000000\r\n"


@pytest.mark.parametrize("encoding,sep,header", [("utf-8-sig", ",", "path,label"),   # Excel's "CSV UTF-8"
                                                 ("utf-8", ";", "path;label"),      # Excel where 0,5 is a number
                                                 ("utf-8", "\t", "path\tlabel"),    # tab-separated
                                                 ("utf-8", ",", "Path, Label")])    # typed by hand
def test_labels_and_assignments_saved_by_a_spreadsheet_read_the_same(tmp_path, monkeypatch, encoding, sep, header):
    """A BOM made the first column 'path' unknown ("lacks column(s) path"), before 2026-12-06."""
    import io
    import sys

    from visclust.io import resolve_labels

    monkeypatch.chdir(tmp_path)
    rows = [("a b.png", "cat"), ("x;y.png", "dog")]  # a space and the other separator inside a name
    (tmp_path / "labels.csv").write_bytes(
        "\r\n".join([header] + [f'"{p}"{sep}{lab}' for p, lab in rows]).encode(encoding) + b"\r\n")
    assert resolve_labels(str(tmp_path / "labels.csv"), ["a b.png", "x;y.png"]) == ["cat", "dog"]
    a_header = header.replace("label", "cluster").replace("Label", "Cluster") + sep + "confidence"
    text = "\r\n".join([a_header] + [f'"{p}"{sep}{k}{sep}0.5' for k, (p, _) in enumerate(rows)]) + "\r\n"
    (tmp_path / "a.csv").write_bytes(text.encode(encoding))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode(encoding))))
    for a in (read_assignments(tmp_path / "a.csv"), read_assignments("-")):
        assert a.paths == ["a b.png", "x;y.png"] and a.clusters.tolist() == [0, 1]


def test_a_list_file_saved_by_notepad_reads_its_first_path(tmp_path):
    """A byte-order mark glued itself to the first path ("\\ufeffa.png": not found), before 2026-12-06."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_bytes("../a.png\r\n# a comment\r\n\r\n../b.png\r\n".encode("utf-8-sig"))
    assert collect_inputs([tmp_path / "sub" / "list.txt"]) == [os.path.join(str(tmp_path / "sub"), "..", n)
                                                              for n in ("a.png", "b.png")]


def test_a_labels_csv_may_name_the_images_relative_to_its_own_folder(tmp_path, monkeypatch):
    from visclust.exceptions import LabelsError
    from visclust.io import resolve_labels

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (data / "labels.csv").write_text("path,label\nimg/a.png,cat\nimg/b.png,dog\n")
    images = [str(data / "img" / "a.png"), str(data / "img" / "b.png")]
    monkeypatch.chdir(tmp_path)  # "img/a.png" is not relative to here
    assert resolve_labels(str(data / "labels.csv"), images) == ["cat", "dog"]
    monkeypatch.chdir(data)  # ... and here it is: the current directory first, as before
    (data / "img2").mkdir()
    (data / "img2" / "img").mkdir()
    (data / "img2" / "labels.csv").write_text("path,label\nimg/a.png,bird\n")
    assert resolve_labels(str(data / "img2" / "labels.csv"), images[:1]) == ["bird"]
    with pytest.raises(LabelsError, match="relative to the current directory or to the CSV's folder"):
        resolve_labels(str(data / "labels.csv"), [str(tmp_path / "elsewhere.png")])


def test_check_writable_fails_as_the_write_would_and_leaves_nothing(tmp_path):
    from visclust.io import check_writable

    check_writable(tmp_path / "new" / "m.vcm")  # the folder is made, as the write would make it
    assert os.listdir(tmp_path / "new") == []  # no test file left behind
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OSError, match="while writing; check the output path") as e:
        check_writable(tmp_path / "plain" / "m.vcm")  # a file where a folder should be
    assert e.value.filename == str(tmp_path / "plain" / "m.vcm")
    with pytest.raises(IsADirectoryError, match="Is a directory while writing; give a file name"):
        check_writable(tmp_path)


def test_input_dash_with_nothing_piped_says_so_rather_than_waiting(monkeypatch):
    """`visclust predict M -` typed at a terminal would wait for the user to type paths."""
    import io as _io

    import visclust.io as vio

    class Terminal(_io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(vio, "_stdin_cache", [])
    with pytest.raises(InputError, match="nothing is piped in; pipe them"):
        vio.stdin_paths(Terminal("a.png\n"))
    assert vio.stdin_paths(_io.StringIO("a.png\r\n\nb dir/c.png  \n")) == ("a.png", "b dir/c.png")
    assert vio.stdin_paths(_io.StringIO("other.png\n")) == ("a.png", "b dir/c.png")  # read once per process
