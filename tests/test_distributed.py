"""Extraction on Ray: same features and store as the single-process engine, a killed worker's
batch redone exactly once, bad images skipped with their reasons.

The tests start their own Ray instance on 127.0.0.1 (two CPUs, a 200 MB object store) and run
two actors on it; the CLI test starts one through ``visclust extract --engine ray``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_shape_images
from visclust.backbones import create_backbone
from visclust.distributed import CRASH_ONCE_ENV, BackboneSpec, compute_features_ray, extract_ray, list_inputs_ray
from visclust.exceptions import InputError, MissingDependencyError, NoImagesError
from visclust.features import backbone_at_size, compute_features, extract_features, small_image_backbone
from visclust.io import collect_inputs
from visclust.store import FeatureStore, file_stat

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install 'visclust[distributed]'")
OBJECT_STORE = 200 * 2**20


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the module: 127.0.0.1, two CPUs, so two single-CPU actors."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def images(tmp_path) -> list[str]:
    """36 shape images plus two unreadable files."""
    root = make_shape_images(tmp_path / "imgs", n_per_class=12)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "empty.png").write_bytes(b"")
    return collect_inputs([root])


def store_rows(store: FeatureStore) -> dict[str, np.ndarray]:
    return {p: x for ps, X in store.iter_rows(mmap=False) for p, x in zip(ps, X)}


def manifest_paths(store: FeatureStore) -> list[str]:
    """Every row of every committed shard, duplicates included."""
    out = []
    for name in os.listdir(store.shards_dir):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(store.shards_dir, name)) as f:
                out.extend(json.load(f)["paths"])
    return out


@needs_ray
def test_ray_store_equals_single_process_store(ray_session, images, tmp_path):
    spec = BackboneSpec("torchvision/mobilenet_v2", pretrained=False)
    backbone = spec.build()
    local = compute_features(backbone, images, tmp_path / "local", engine="torch", num_workers=0, progress=False)
    stats = compute_features_ray(spec, images, tmp_path / "ray", num_workers=2, batch_size=8, engine="torch",
                                 progress=False)
    assert stats.engine == "ray(2 x torch)"
    assert (stats.n_inputs, stats.n_cached, stats.n_computed) == (38, 0, 36)

    want = store_rows(FeatureStore(tmp_path / "local", backbone.config))
    got_store = FeatureStore(tmp_path / "ray", backbone.config)
    got = store_rows(got_store)
    assert sorted(got) == sorted(want) and len(got) == 36
    ref = np.stack([want[p] for p in sorted(want)])
    diff = np.abs(np.stack([got[p] for p in sorted(want)]) - ref).max()
    assert diff <= 1e-4 * np.abs(ref).max(), diff
    # Same unreadable files, same reasons, in the same store file.
    assert stats.skipped == local.skipped and [os.path.basename(p) for p, _ in stats.skipped] == ["broken.jpg",
                                                                                                  "empty.png"]
    assert got_store.skipped() == FeatureStore(tmp_path / "local", backbone.config).skipped()
    assert len((Path(got_store.path) / "skipped.csv").read_text().splitlines()) == 3  # header + 2
    # The single-process engine finds every readable image already done.
    again = compute_features(backbone, images, tmp_path / "ray", engine="torch", num_workers=0, progress=False)
    assert (again.n_cached, again.n_computed) == (36, 0)


@needs_ray
@pytest.mark.parametrize("input_size", ["auto", 96])
def test_ray_extracts_at_the_input_sizes_the_single_process_engine_uses(ray_session, images, tmp_path, input_size):
    # 48 x 48 images: 'auto' extracts the backbone's size and the smaller one `fit` compares
    spec = BackboneSpec("torchvision/mobilenet_v2", pretrained=False)
    backbone = spec.build()
    want = [backbone, small_image_backbone(backbone, images)] if input_size == "auto" \
        else [backbone_at_size(backbone, input_size)]
    assert want[-1].preprocess.input_size < backbone.preprocess.input_size
    got = extract_ray(spec, [str(Path(images[0]).parents[1])], tmp_path / "ray", num_workers=2, batch_size=8,
                      engine="torch", progress=False, input_size=input_size)
    assert [s.build().config for s, _ in got] == [bb.config for bb in want]
    for bb, (_, stats) in zip(want, got):
        assert (stats.n_inputs, stats.n_computed) == (38, 36)
        compute_features(bb, images, tmp_path / "local", engine="torch", num_workers=0, progress=False)
        ref = store_rows(FeatureStore(tmp_path / "local", bb.config))
        rows = store_rows(FeatureStore(tmp_path / "ray", bb.config))
        assert sorted(rows) == sorted(ref) and len(rows) == 36
        a, b = (np.stack([r[p] for p in sorted(ref)]) for r in (rows, ref))
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@needs_ray
def test_killed_worker_batch_is_redone_once(ray_session, images, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    spec = BackboneSpec("baseline/pixels")
    stats = compute_features_ray(spec, images, tmp_path / "store", num_workers=2, batch_size=4, engine="torch",
                                 progress=False)
    # A worker process really died (os._exit in an actor, not in this process)...
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    # ...and its batch was redone: every image exactly once, with the right features.
    store = FeatureStore(tmp_path / "store", spec.build().config)
    rows = manifest_paths(store)
    ref = extract_features(spec.build(), images, engine="torch", num_workers=0, progress=False)
    assert sorted(rows) == sorted(ref.paths) and len(set(rows)) == len(rows) == 36
    X, found, _ = store.read(ref.paths)
    assert len(found) == 36 and np.array_equal(X, ref.features)
    assert stats.n_computed == 36 and len(stats.skipped) == 2


def test_device_must_be_one_ray_can_assign():
    from visclust.distributed import _plan

    with pytest.raises(InputError, match="--device must be cpu, cuda or auto"):
        _plan(FakeCluster({"CPU": 2, "GPU": 2}), "cuda:1", None, None)
    with pytest.raises(InputError, match="no GPUs"):
        _plan(FakeCluster({"CPU": 2}), "cuda", None, None)


def test_without_ray_the_error_says_what_to_install(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'visclust\[distributed\]'"):
        compute_features_ray(BackboneSpec("baseline/pixels"), images, tmp_path / "s")


def test_importing_visclust_does_not_import_ray():
    code = ("import sys, visclust, visclust.distributed, visclust.features, visclust.cli; "
            "visclust.cli.build_parser(); print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@needs_ray
def test_listing_on_ray_equals_the_serial_listing(ray_session, tmp_path):
    """Subtrees are walked and stat'ed by Ray tasks; the merged list is collect_inputs's,
    in its order, with symlinked directories entered once as the serial walk does."""
    root = tmp_path / "tree"
    for d in ("a/x", "a/y/z", "b", "c/deep/er"):
        (root / d).mkdir(parents=True)
    for f in ("top.jpg", "a/1.png", "a/x/2.jpg", "a/y/z/3.jpg", "b/4.jpg", "b/5.webp", "c/deep/er/6.png",
              "b/notes.md"):
        (root / f).write_bytes(b"x" * len(f))
    os.symlink(root / "c" / "deep", root / "a" / "to_deep")  # reached first through a/, then again in c/
    os.symlink(root / "b", root / "c" / "to_b")  # a sibling top-level folder: not entered twice
    os.symlink(root, root / "b" / "loop")  # a loop back to the root
    single = tmp_path / "single.jpg"
    single.write_bytes(b"y")
    inputs = [str(root), str(single), str(root / "b")]
    paths, stats = list_inputs_ray(inputs)
    assert paths == collect_inputs(inputs)
    assert str(root / "a" / "to_deep" / "er" / "6.png") in paths and str(root / "c" / "deep" / "er" / "6.png") not in paths
    assert stats == [file_stat(p) for p in paths] and all(st is not None for st in stats)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(NoImagesError, match="no image files"):
        list_inputs_ray([str(tmp_path / "empty")])


@needs_ray
def test_cli_extract_on_a_local_ray_instance(images, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    store = tmp_path / "store"
    base = [sys.executable, "-m", "visclust.cli", "extract", str(Path(images[0]).parents[1]), "--store", str(store),
            "--backbone", "baseline/pixels"]
    r = subprocess.run([*base, "--engine", "ray", "--workers", "2", "--ray-object-store", "200", "--batch-size", "8"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr  # finished, two images skipped
    assert "36 computed" in r.stderr and "ray(2 x " in r.stderr and "2 skipped" in r.stderr
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    # The single-process extract reads the Ray-made store as its own.
    r = subprocess.run([*base, "--executor", "local", "--workers", "0"], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 1 and "0 computed" in r.stderr and "36 already in the store" in r.stderr, r.stderr


class FakeCluster:
    """What ``_plan`` asks of ``ray``: cluster totals and per-node resources."""

    def __init__(self, *nodes):
        self._nodes = nodes

    def cluster_resources(self):
        total = {}
        for r in self._nodes:
            for k, v in r.items():
                total[k] = total.get(k, 0) + v
        return total

    def nodes(self):
        return [{"Alive": True, "Resources": r} for r in self._nodes]


@pytest.mark.parametrize("nodes, device, workers, want", [
    # CPU only: one single-CPU actor per CPU, or as many as asked.
    ([{"CPU": 2}], None, None, (2, 1.0, 0.0, "cpu")),
    ([{"CPU": 16}, {"CPU": 8}], "auto", 3, (3, 1.0, 0.0, "cpu")),
    # GPUs: one actor per GPU, each with its node's CPUs per GPU less one for decoding;
    # a CPU-only node in the cluster must not inflate that share.
    ([{"CPU": 16, "GPU": 2}, {"CPU": 64}], None, None, (2, 7.0, 1.0, "cuda")),
    ([{"CPU": 32, "GPU": 8}, {"CPU": 8, "GPU": 4}], "cuda", None, (12, 1.0, 1.0, "cuda")),
    # --device cpu leaves the GPUs alone.
    ([{"CPU": 4, "GPU": 1}], "cpu", None, (4, 1.0, 0.0, "cpu")),
])
def test_plan_sizes_the_actor_pool_from_the_cluster(nodes, device, workers, want):
    from visclust.distributed import _plan

    assert _plan(FakeCluster(*nodes), device, workers, None) == want
