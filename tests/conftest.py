"""Shared fixtures: real files made in tmp dirs, the real CLI in a subprocess, and the real
weights/data of ../shared through one setting, VISCLUST_SHARED (tests needing it skip with
the reason when it is absent)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

SHARED_ENV = "VISCLUST_SHARED"
MOBILENET_FILE = "weights/mobilenet_v2-imagenet-qnnpack-dequant-fp16.safetensors"


def shared_dir() -> Path | None:
    value = os.environ.get(SHARED_ENV)
    if not value:
        return None
    p = Path(value)
    return p if p.is_dir() else None


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports go to a temporary cache, never the user's ~/.cache (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISCLUST_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Under pytest-xdist each worker shares the CPUs with the others: torch and the BLAS /
    OpenMP pools in this process use one thread each, so two workers on two cores do not run
    four (subprocesses, such as the real CLI, keep their defaults)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    p = shared_dir()
    if p is None:
        pytest.skip(f"needs the shared weights/data folder: set {SHARED_ENV}=../shared (absent here)")
    return p


@pytest.fixture(scope="session")
def mobilenet_weights(shared) -> Path:
    p = shared / MOBILENET_FILE
    if not p.is_file():
        pytest.skip(f"{p} is missing")
    return p


def _extract_tar(archive: Path, dest: Path) -> Path:
    marker = dest / ".done"
    if not marker.exists():
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
        marker.touch()
    return dest


@pytest.fixture(scope="session")
def cifar_test_dir(shared, tmp_path_factory) -> Path:
    """The CIFAR-10 test set as ``test/<class>/<n>.jpg`` (10 x 1000 JPEGs)."""
    archive = shared / "data/cifar10-test-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is missing")
    return _extract_tar(archive, tmp_path_factory.mktemp("cifar")) / "test"


@pytest.fixture(scope="session")
def cifar_small(cifar_test_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two disjoint CIFAR subsets as symlink trees: (fit: 4 classes x 60, unseen: 4 x 20)."""
    root = tmp_path_factory.mktemp("cifar_small")
    classes = ["airplane", "automobile", "frog", "ship"]
    for split, lo, hi in (("fit", 0, 60), ("unseen", 60, 80)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for f in sorted((cifar_test_dir / c).iterdir())[lo:hi]:
                (d / f.name).symlink_to(f)
    return root / "fit", root / "unseen"


def make_shape_images(root: Path, n_per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """Three obviously different classes of small RGB images in ``root/<class>/``:
    red discs, green horizontal bars, blue checkerboards, with noise and jitter."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for cls in ("red_disc", "green_bars", "blue_checks"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 255, 3)))
            d = ImageDraw.Draw(img)
            j = int(rng.integers(-4, 5))
            if cls == "red_disc":
                d.ellipse((8 + j, 8 + j, size - 8 + j, size - 8 + j), fill=(220, 20, 20))
            elif cls == "green_bars":
                for y in range(2 + j % 3, size, 8):
                    d.rectangle((0, y, size, y + 3), fill=(20, 180, 40))
            else:
                for y in range(0, size, 8):
                    for x in range(0, size, 8):
                        if (x // 8 + y // 8) % 2:
                            d.rectangle((x, y, x + 7, y + 7), fill=(20, 40, 200))
            arr = np.asarray(img, np.int16) + rng.integers(-12, 13, (size, size, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def shape_images(tmp_path) -> Path:
    return make_shape_images(tmp_path / "shapes")


def run_cli(*args, cwd=None, env=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    """Run ``visclust ARGS`` as a user does: a real process (``input``: text on its stdin)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "visclust.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture
def cli():
    return run_cli
