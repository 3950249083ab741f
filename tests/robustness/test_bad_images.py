"""A messy image folder: every good image is assigned, every bad one is decoded correctly or
skipped with its path and reason (summary and ``*.skipped.csv``), exit status 1, memory
bounded. Each case is built here with Pillow."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_shape_images
from robust_cases import (FAST_FIT, build_messy_folder, cli_command, png_claiming_size, photo,
                          unreadable_file_preexec)

from visclust.exceptions import ImageReadError
from visclust.io import MAX_IMAGE_PIXELS, load_image


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def run_measured(args, cwd, preexec_fn=None, timeout=300):
    """Run the CLI; return (returncode, stderr, peak RSS in MiB of that process)."""
    err_path = os.path.join(cwd, "stderr.txt")
    with open(err_path, "wb") as err:
        p = subprocess.Popen(cli_command(*args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
                             preexec_fn=preexec_fn)
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
    with open(err_path, encoding="utf-8", errors="surrogateescape") as f:
        return p.returncode, f.read(), usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Good images (3 classes x 5) in good/, every bad case in messy/."""
    root = tmp_path_factory.mktemp("messy_run")
    make_shape_images(root / "good", n_per_class=5)
    preexec, why = unreadable_file_preexec()
    cases = build_messy_folder(root / "messy")
    if why:  # root can read a chmod 000 file and nothing here can stop it: see the next test
        cases = [c for c in cases if c.name != "no_read_permission.png"]
        os.unlink(root / "messy" / "no_read_permission.png")
    return root, cases, preexec


def test_messy_folder_assigns_every_good_image_and_reports_every_bad_one(messy):
    root, cases, preexec = messy
    rc, stderr, peak_mib = run_measured(["fit", "good", "messy", *FAST_FIT, "-o", "m.vcm",
                                         "--assignments", "fit.csv"], cwd=root, preexec_fn=preexec)
    assert rc == 1, stderr  # documented: finished, some inputs skipped
    assigned = {r["path"]: int(r["cluster"]) for r in read_rows(root / "fit.csv")}
    skipped = {r["path"]: r["reason"] for r in read_rows(root / "fit.skipped.csv")}

    good = {os.path.join("good", c, f) for c in os.listdir(root / "good") for f in os.listdir(root / "good" / c)}
    assert good <= set(assigned)
    expected_ok = {os.path.join("messy", c.name) for c in cases if c.outcome == "assigned"}
    expected_skip = {os.path.join("messy", c.name): c.reason for c in cases if c.outcome == "skipped"}
    assert set(assigned) == good | expected_ok
    assert set(skipped) == set(expected_skip)
    for path, pattern in expected_skip.items():
        assert re.search(pattern, skipped[path]), (path, skipped[path])
        assert path in skipped[path]  # the reason names the file
        assert skipped[path] in stderr  # and the summary shows it
    assert "list in fit.skipped.csv" in stderr
    # The non-UTF-8 name survives byte for byte; the two copies of one image go together.
    assert any(os.fsencode(p).endswith(b"caf\xe9_latin1_name.png") for p in assigned)
    assert assigned["messy/same_a.png"] == assigned["messy/same_b.png"]
    # The 50,000 x 50,000 "PNG" was never decoded (7.5 GB); the 8000 x 8000 photo was
    # decoded at reduced scale. Torch and friends alone take ~0.5 GB.
    assert peak_mib < 1500, f"peak RSS {peak_mib:.0f} MiB"

    # The saved model sorts the same folder the same way, skipping the same files.
    rc, stderr, _ = run_measured(["predict", "m.vcm", "good", "messy", "-o", "pred.csv", "--workers", "0"],
                                 cwd=root, preexec_fn=preexec)
    assert rc == 1, stderr
    assert {r["path"]: int(r["cluster"]) for r in read_rows(root / "pred.csv")} == assigned
    assert set(r["path"] for r in read_rows(root / "pred.skipped.csv")) == set(expected_skip)


def test_unreadable_file_is_skipped_with_permission_denied(tmp_path):
    preexec, why = unreadable_file_preexec()
    if why:
        pytest.skip(why)
    photo((32, 32)).save(tmp_path / "locked.png")
    os.chmod(tmp_path / "locked.png", 0)
    code = ("import sys\nfrom visclust.io import load_image\nfrom visclust.exceptions import ImageReadError\n"
            "try:\n    load_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "locked.png")], preexec_fn=preexec,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "locked.png: permission denied" in r.stdout


# --------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    build_messy_folder(root, big_photo=False)
    return root


def px(img, x, y):
    return np.asarray(img)[y, x].astype(int)


def test_exif_rotated_jpeg_is_used_upright(folder):
    img = load_image(folder / "exif_rotated.jpg")
    assert img.size == (80, 40)  # stored 40 x 80
    assert px(img, 70, 20)[0] > 180 and px(img, 10, 20)[2] > 180  # red now on the right, blue left


def test_palette_transparency_becomes_white_and_opaque_keeps_its_colour(folder):
    img = load_image(folder / "palette_transparent.png")
    assert img.mode == "RGB" and list(px(img, 4, 8)) == [255, 255, 255] and list(px(img, 28, 8)) == [0, 0, 255]


def test_sixteen_bit_png_keeps_its_full_range(folder):
    img = load_image(folder / "sixteen_bit.png")
    assert list(px(img, 4, 8)) == [0, 0, 0] and list(px(img, 28, 8)) == [255, 255, 255]


def test_animated_gif_gives_its_first_frame(folder):
    r, g, b = px(load_image(folder / "animated.gif"), 16, 16)
    assert g > 150 and r < 60 and b < 60


def test_cmyk_jpeg_keeps_its_colours(folder):
    img = load_image(folder / "cmyk.jpg")
    r, g, b = px(img, 18, 18)  # inside the red disc of photo()
    assert img.mode == "RGB" and r > 180 and g < 90 and b < 90


def test_rgba_is_composited_over_white_and_grayscale_stays_gray(folder):
    from PIL import Image

    rgba = Image.open(folder / "rgba.png")
    expected = np.asarray(rgba.convert("RGB"), float) * 100 / 255 + 255 * (1 - 100 / 255)
    assert np.abs(np.asarray(load_image(folder / "rgba.png"), float) - expected).max() <= 1.5
    gray = np.asarray(load_image(folder / "grayscale.png"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


@pytest.mark.parametrize("name", ["other_format.webp", "other_format.tif", "other_format.avif"])
def test_other_formats_pillow_can_read(folder, name):
    if not (folder / name).exists():
        pytest.skip(f"this Pillow cannot write {name}")
    r, g, b = px(load_image(folder / name), 18, 18)
    assert r > 180 and g < 90 and b < 90


BAD = [("zero_bytes.jpg", "empty"), ("truncated.jpg", "truncated"), ("text.jpg", "not an image Pillow can decode"),
       ("bomb.png", "refused without decoding"), ("broken_symlink.png", "broken symlink"),
       ("loop_a.png", "symlink loop"), ("x.jpg", "is a directory"), ("fifo.jpg", "not a regular file")]


@pytest.mark.parametrize("name, reason", BAD, ids=[name for name, _ in BAD])
def test_bad_file_raises_image_read_error_naming_it(folder, name, reason):
    with pytest.raises(ImageReadError, match=re.escape(str(folder / name)) + ".*" + reason):
        load_image(folder / name)


# --------------------------------------------------------------------------- memory


def peak_rss_of_loading(path, draft_size=None) -> tuple[float, str]:
    """Peak RSS growth (MiB) of a fresh process loading ``path``, and what it printed."""
    code = (
        "import resource, sys\n"
        "from visclust.io import load_image\n"
        "from visclust.exceptions import ImageReadError\n"
        "import PIL.Image, numpy\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    img = load_image(sys.argv[1], draft_size={draft_size!r}); msg = 'ok %dx%d' % img.size\n"
        "except ImageReadError as e:\n"
        "    msg = 'refused: %s' % e\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
        "print(msg)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grow, msg = r.stdout.splitlines()
    return float(grow), msg


@pytest.mark.parametrize("side", [50_000, 12_000])  # refused by Pillow's bomb check / by ours
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(png_claiming_size(side, side))
    grow, msg = peak_rss_of_loading(tmp_path / "bomb.png")
    assert msg.startswith("refused:") and "pixel limit" in msg, msg
    assert grow < 50, f"{grow:.0f} MiB for a refused file"


def test_8000_px_photo_is_accepted_with_bounded_memory(tmp_path):
    photo((8000, 8000)).save(tmp_path / "big.jpg", quality=80)
    grow, msg = peak_rss_of_loading(tmp_path / "big.jpg", draft_size=224)
    assert msg == "ok 1000x1000"  # decoded at 1/8 scale: the caller needs 224 px
    assert grow < 100, f"{grow:.0f} MiB"
