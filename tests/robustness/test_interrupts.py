"""Crashes and interruptions lose nothing: ``kill -9`` at random moments during ``extract``
and ``fit`` (then the same commands again give the results of an uninterrupted run), Ctrl-C
(stops within about two seconds, finished work kept), and a full disk (clear error naming
the path, exit 2, nothing earlier damaged, the next run after freeing space succeeds).

``VISCLUST_KILL_TRIALS`` sets the number of kill -9 trials (default 10) and
``VISCLUST_KILL_SEED`` their random moments (default: new each run, printed on failure).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shape_images
from robust_cases import FAST_FIT, cli_command, run_visclust

from visclust.artifact import read_model_file
from visclust.io import read_assignments

TRIALS = int(os.environ.get("VISCLUST_KILL_TRIALS", 10))
SEED = int(os.environ.get("VISCLUST_KILL_SEED", random.SystemRandom().randrange(10**6)))
#: Ctrl-C must end the command this fast (seconds); a little slack over "a second or two" for
#: a loaded 2-core CI machine.
CTRL_C_LIMIT = 2.5
#: ... and the process must be gone this fast (interpreter teardown after torch is slow).
EXIT_LIMIT = 10.0


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, cwd, **kw) -> subprocess.Popen:
    # A session of its own, like a job in a terminal: signals go to its whole process group.
    # And as in a terminal, SIGINT at its default: a test runner started in the background of a
    # script (`.ci/run &`) hands its children SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (the Ctrl-C test's run finished all its images with rc 0).
    return subprocess.Popen(cli_command(*args), cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_sigint_default, **kw)


def temporaries(root) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if ".tmp-" in n]


def model_signature(path) -> tuple:
    """What a model file holds, minus when and where it was written."""
    manifest, arrays = read_model_file(path)
    return json.dumps(manifest["feature_clusterer"], sort_keys=True), {k: v.tobytes() for k, v in arrays.items()}


def assignment_rows(path) -> list[tuple]:
    a = read_assignments(path)
    return list(zip(a.paths, a.clusters.tolist(), a.confidence.tolist()))


# --------------------------------------------------------------------------- kill -9


def test_kill_9_at_random_moments_then_rerun_equals_uninterrupted(tmp_path):
    make_shape_images(tmp_path / "imgs", n_per_class=6, size=32)
    extract = ["extract", "imgs", "--store", "store", "--backbone", "baseline/pixels", "--workers", "0",
               "--batch-size", "2", "--shard-size", "2", "-q"]
    fit = ["fit", "imgs", *FAST_FIT, "--store", "store", "-o", "out/m.vcm", "--assignments", "out/a.csv", "-q"]

    # The uninterrupted run (features in memory, no store), in a folder of its own with the
    # same relative paths.
    ref = tmp_path / "ref"
    ref.mkdir()
    os.symlink(tmp_path / "imgs", ref / "imgs")
    t = time.monotonic()
    r = run_visclust(*[a for a in fit if a not in ("--store", "store")], cwd=ref)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr

    rng = random.Random(SEED)
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(tmp_path / "imgs", work / "imgs")
    killed = 0
    for trial in range(TRIALS):
        name = "extract" if trial % 2 == 0 else "fit"
        when = rng.uniform(0.0, took)
        p = start(extract if name == "extract" else fit, work)
        try:
            p.wait(when)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed += 1
        p.stderr.close()
        what = f"seed {SEED}, trial {trial}: {name} killed after {when:.2f}s"
        # Whatever was written is whole: the model and CSV are either absent or complete.
        if (work / "out" / "m.vcm").exists():
            assert model_signature(work / "out" / "m.vcm") == model_signature(ref / "out" / "m.vcm"), what
        if (work / "out" / "a.csv").exists():
            assert assignment_rows(work / "out" / "a.csv") == assignment_rows(ref / "out" / "a.csv"), what
    assert killed >= min(3, TRIALS), f"only {killed} of {TRIALS} runs were killed before they finished"

    # The same commands again complete and give the uninterrupted results.
    for cmd in (extract, fit):
        r = run_visclust(*cmd, cwd=work)
        assert r.returncode == 0, f"seed {SEED}: {r.stderr}"
    assert model_signature(work / "out" / "m.vcm") == model_signature(ref / "out" / "m.vcm")
    assert assignment_rows(work / "out" / "a.csv") == assignment_rows(ref / "out" / "a.csv")
    assert temporaries(work / "out") == []  # what the killed writers left was cleaned up


# --------------------------------------------------------------------------- Ctrl-C


def manifests(store: Path) -> list[Path]:
    """The shards' committed manifests: not the ``.tmp-*.json`` one a running writer is filling
    (pathlib's glob matches names that start with a dot; the store's own readers skip them)."""
    return [p for p in store.glob("*/shards/*.json") if not p.name.startswith(".")]


def committed_rows(store: Path) -> int:
    return sum(len(json.loads(p.read_text())["paths"]) for p in manifests(store))


def wait_for(condition, timeout=180.0, what="condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_ctrl_c_stops_within_two_seconds_and_keeps_finished_work(tmp_path):
    # enough images that the run is still working when Ctrl-C comes (0-0.3 s after the first
    # shard): on a fast machine 120 images were all done by then, and the signal met the exit
    n = 360
    make_shape_images(tmp_path / "imgs", n_per_class=n // 3, size=48)
    cmd = ["extract", "imgs", "--store", "store", "--backbone", "torchvision/mobilenet_v2", "--random-weights",
           "--workers", "0", "--batch-size", "4", "--shard-size", "4"]
    p = start(cmd, tmp_path)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), ln.decode(errors="replace"))
                                                          for ln in iter(p.stderr.readline, b"")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(manifests(tmp_path / "store")) or p.poll() is not None,
                 what="the first committed shard")
        assert p.poll() is None, "extract finished before it could be interrupted"
        first = time.monotonic()
        time.sleep(random.Random(SEED).uniform(0.0, 0.3))
        rows_at_signal = committed_rows(tmp_path / "store")
        t = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = p.wait(timeout=60)
        exited = time.monotonic() - t
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    reader.join(10)
    err = "".join(ln for _, ln in lines)
    assert rc == 130, (f"rc {rc}; Ctrl-C came {t - first:.2f}s after the first shard was seen, with "
                       f"{rows_at_signal} of {n} rows committed (seed {SEED}):\n{err}")
    stopped = [when - t for when, ln in lines if "interrupted" in ln]
    assert stopped and stopped[0] < CTRL_C_LIMIT, f"work stopped {stopped}s after Ctrl-C"
    # Exiting also unloads torch & co., which takes seconds on a loaded machine.
    assert exited < EXIT_LIMIT, f"exited {exited:.2f}s after Ctrl-C"
    assert "Traceback" not in err

    kept = committed_rows(tmp_path / "store")
    assert 0 < kept < n
    # Even a Ctrl-C inside a shard write leaves no temporary or uncommitted file behind.
    assert temporaries(tmp_path / "store") == []
    r = run_visclust(*cmd, cwd=tmp_path)  # the rerun computes only what was not finished
    assert r.returncode == 0, r.stderr
    assert re.search(rf"{n} images: {n - kept} computed.* {kept} already in the store", r.stderr), r.stderr


# --------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int):
    """A folder that holds at most ``size_bytes``: a tmpfs where mounting works (root on
    Linux), else None (then the caller limits file sizes with RLIMIT_FSIZE)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True) if os.geteuid() == 0 and shutil.which("mount") else None
    mounted = r is not None and r.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave_free: int) -> Path:
    """Fill the file system of ``folder`` until ``leave_free`` bytes are left."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = max(free - leave_free, 0)
        while left > 0:
            f.write(chunk[:left])
            left -= min(left, len(chunk))
    return filler


def test_disk_full_names_the_path_keeps_earlier_files_and_next_run_succeeds(tmp_path):
    make_shape_images(tmp_path / "imgs", n_per_class=4, size=32)
    disk = tmp_path / "disk"
    with small_disk(disk, 96 * 2**20) as mounted:
        preexec = None
        fit = ["fit", "imgs", *FAST_FIT, "-o", disk / "m.vcm", "--assignments", disk / "a.csv", "-q"]
        r = run_visclust(*fit, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        model_before, csv_before = (disk / "m.vcm").read_bytes(), (disk / "a.csv").read_bytes()

        # The model (38 MB: 3072 pixels, no PCA) cannot be written.
        if mounted:
            filler = fill(disk, leave_free=4 * 2**20)
            expected = "No space left on device"
        else:
            def preexec():  # no tmpfs: a per-process file size limit gives the same failure
                resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 2**20, 4 * 2**20))
            expected = "File too large"
        r = run_visclust(*fit, cwd=tmp_path, preexec_fn=preexec)
        assert r.returncode == 2, r.stderr
        assert expected in r.stderr and str(disk / "m.vcm") in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert (disk / "m.vcm").read_bytes() == model_before and (disk / "a.csv").read_bytes() == csv_before
        assert temporaries(disk) == []

        # Room for the model but not the CSV: the CSV is named, the old one intact.
        if mounted:
            filler.unlink()
            filler = fill(disk, leave_free=0)
            r = run_visclust(*fit[:-5], "-o", tmp_path / "m2.vcm", "--assignments", disk / "a.csv", "-q", cwd=tmp_path)
            assert r.returncode == 2 and expected in r.stderr and str(disk / "a.csv") in r.stderr, r.stderr
            assert (disk / "a.csv").read_bytes() == csv_before and temporaries(disk) == []
            filler.unlink()

        # Space freed (or limit lifted): the same command succeeds, with the same results.
        r = run_visclust(*fit, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        (tmp_path / "before.vcm").write_bytes(model_before)
        assert model_signature(disk / "m.vcm") == model_signature(tmp_path / "before.vcm")
        assert (disk / "a.csv").read_bytes() == csv_before
