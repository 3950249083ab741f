"""Builders shared by the robustness tests: messy image folders made with Pillow, a way to
take file-permission override away from root, and the real CLI as a child process.

Nothing here is a binary fixture: every bad file is written by the test that needs it.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Options that make ``visclust fit`` cheap and deterministic: weight-free pixels, no PCA, one
#: process, one clustering pipeline (no selection among candidates, no UMAP).
FAST_FIT = ("--backbone", "baseline/pixels", "--pca", "0", "--workers", "0", "--clusters", "3", "--method", "kmeans",
            "--space", "pca")


# --------------------------------------------------------------------------- the CLI


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "visclust.cli", *map(os.fsdecode, args)]


def run_visclust(*args, cwd=None, timeout=300, preexec_fn=None, env=None) -> subprocess.CompletedProcess:
    """``visclust ARGS`` in a real process; output decoded leniently (paths may not be UTF-8)."""
    return subprocess.run(cli_command(*args), cwd=cwd, capture_output=True, timeout=timeout,
                          encoding="utf-8", errors="surrogateescape", preexec_fn=preexec_fn,
                          env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- permissions


def unreadable_file_preexec():
    """How to make a ``chmod 000`` file unreadable for the child: ``(preexec_fn, reason)``.

    Not root: chmod alone works (``preexec_fn`` None). Root reads any file, so the child
    drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set before exec (it
    then runs as a root without file-permission override). ``reason`` is set when neither
    works, for ``pytest.skip``.
    """
    if os.geteuid() != 0:
        return None, ""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as e:  # pragma: no cover - non-glibc systems
        return None, f"running as root and libc is not loadable to drop capabilities ({e})"

    def drop_file_override():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    with tempfile.TemporaryDirectory() as d:
        locked = os.path.join(d, "locked")
        with open(locked, "wb") as f:
            f.write(b"x")
        os.chmod(d, 0o755)
        os.chmod(locked, 0)
        try:
            probe = subprocess.run([sys.executable, "-c", f"open({locked!r}, 'rb').read(1)"],
                                   preexec_fn=drop_file_override, capture_output=True)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"running as root and capabilities cannot be dropped here ({e})"
    if probe.returncode == 0:
        return None, "running as root and dropping CAP_DAC_OVERRIDE does not block reading here"
    return drop_file_override, ""


# --------------------------------------------------------------------------- images


def photo(size: tuple[int, int], seed: int = 0):
    """A photo-like RGB image: smooth gradients and a few shapes (compresses well)."""
    from PIL import Image, ImageDraw

    w, h = size
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    d.ellipse((w // 4, h // 4, w // 2, h // 2), fill=(240, 30, 30))
    d.rectangle((w // 2, h // 2, 3 * w // 4, 3 * h // 4), fill=(20, 20, 220))
    return img


def png_claiming_size(width: int, height: int) -> bytes:
    """A real tiny PNG whose IHDR is patched to claim ``width x height`` (valid CRC)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


def exif_rotated_jpeg(path) -> None:
    """A JPEG stored 40 wide x 80 high, top half red, whose EXIF says "rotate 90 CW"
    (orientation 6): shown upright it is 80 x 40 with red on the right."""
    from PIL import Image

    img = Image.new("RGB", (40, 80), (20, 20, 220))
    img.paste((230, 20, 20), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", exif=exif, quality=95)


def palette_png_with_transparency(path) -> None:
    """Left half palette index 0 (red, transparent), right half index 1 (opaque blue)."""
    from PIL import Image

    img = Image.new("P", (32, 16), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 16, 16))
    img.save(path, transparency=0)


def sixteen_bit_png(path) -> None:
    """Grayscale 16-bit: left half 0, right half 65535 (so 8-bit black and white)."""
    from PIL import Image

    a = np.zeros((16, 32), np.uint16)
    a[:, 16:] = 65535
    Image.fromarray(a).save(path)


def animated_gif(path) -> None:
    """Three frames, first one green."""
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), c) for c in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)


@dataclass
class Case:
    """One entry of a messy folder and what visclust must do with it."""

    name: str
    path: str  # may hold surrogate escapes (non-UTF-8 names)
    outcome: str  # "assigned" or "skipped"
    reason: str = ""  # regex the skip reason must match


def build_messy_folder(root: Path, big_photo: bool = True) -> list[Case]:
    """Every bad-input case of the robustness issue, in one folder, next to good images
    (which the caller adds). Returns what each entry must become."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name, outcome, reason=""):
        cases.append(Case(name, os.path.join(os.fspath(root), name), outcome, reason))

    (root / "zero_bytes.jpg").write_bytes(b"")
    add("zero_bytes.jpg", "skipped", "empty")
    buf = io.BytesIO()
    photo((256, 256), 1).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add("truncated.jpg", "skipped", "truncated")
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n")
    add("text.jpg", "skipped", "not an image")
    (root / "bomb.png").write_bytes(png_claiming_size(50_000, 50_000))
    add("bomb.png", "skipped", "pixel limit.*refused without decoding")
    if big_photo:
        photo((8000, 8000), 2).save(root / "big_8000.jpg", quality=80)
        add("big_8000.jpg", "assigned")
    sixteen_bit_png(root / "sixteen_bit.png")
    add("sixteen_bit.png", "assigned")
    photo((48, 48), 3).convert("CMYK").save(root / "cmyk.jpg")
    add("cmyk.jpg", "assigned")
    palette_png_with_transparency(root / "palette_transparent.png")
    add("palette_transparent.png", "assigned")
    animated_gif(root / "animated.gif")
    add("animated.gif", "assigned")
    exif_rotated_jpeg(root / "exif_rotated.jpg")
    add("exif_rotated.jpg", "assigned")
    photo((48, 48), 4).convert("L").save(root / "grayscale.png")
    add("grayscale.png", "assigned")
    rgba = photo((48, 48), 5).convert("RGBA")
    rgba.putalpha(100)
    rgba.save(root / "rgba.png")
    add("rgba.png", "assigned")
    photo((48, 48), 6).save(root / "no_read_permission.png")
    os.chmod(root / "no_read_permission.png", 0)
    add("no_read_permission.png", "skipped", "permission denied")
    os.symlink(root / "does_not_exist.png", root / "broken_symlink.png")
    add("broken_symlink.png", "skipped", "broken symlink")
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    add("loop_a.png", "skipped", "symlink loop")
    add("loop_b.png", "skipped", "symlink loop")
    # A directory named like an image is a directory: walked into, its images used.
    (root / "x.jpg").mkdir()
    photo((48, 48), 7).save(root / "x.jpg" / "inside.png")
    add(os.path.join("x.jpg", "inside.png"), "assigned")
    # A directory symlink loop: walked once, not forever.
    os.symlink(root, root / "x.jpg" / "back_to_root")
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    add("fifo.jpg", "skipped", "not a regular file")
    bad_name = os.fsdecode(b"caf\xe9_latin1_name.png")  # not UTF-8
    photo((48, 48), 8).save(os.path.join(os.fsencode(root), os.fsencode(bad_name)))
    add(bad_name, "assigned")
    photo((48, 48), 9).save(root / "same_a.png")
    (root / "same_b.png").write_bytes((root / "same_a.png").read_bytes())
    add("same_a.png", "assigned")
    add("same_b.png", "assigned")
    for ext, fmt in ((".webp", "WEBP"), (".tif", "TIFF"), (".avif", "AVIF")):
        try:
            photo((48, 48), 10).save(root / f"other_format{ext}", fmt)
        except (KeyError, OSError, ValueError):
            continue  # this Pillow cannot write it: nothing to test
        add(f"other_format{ext}", "assigned")
    # HEIC: Pillow writes it only with pillow-heif; a file that claims to be HEIC and is
    # not decodable must be reported with the package to install, never ignored.
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
        add("phone.heic", "skipped", "pillow-heif")
    return cases
