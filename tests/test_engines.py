"""Engines: ONNX Runtime agrees with PyTorch, exports once, falls back to PyTorch on failure."""

from __future__ import annotations

import os

import numpy as np
import pytest

from visclust.backbones import create_backbone
from visclust.engines import (EngineFallbackWarning, OnnxEngine, TorchEngine, create_engine, export_onnx)
from visclust.exceptions import InputError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def mobilenet():
    """A real torchvision network with random weights (the export path of every CNN)."""
    return create_backbone("torchvision/mobilenet_v2", pretrained=False, seed=3)


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One export cache for the module (never the user's ~/.cache): exports are slow."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISCLUST_CACHE", str(root))
        yield root / "onnx"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty export cache, for tests that count or damage exports."""
    monkeypatch.setenv("VISCLUST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)


def test_onnx_engine_matches_pytorch(mobilenet, images):
    eng = create_engine(mobilenet, "onnx", "cpu")
    assert isinstance(eng, OnnxEngine) and eng.max_abs_diff is not None
    ref = TorchEngine(mobilenet, "cpu")(images)
    got = eng(images)
    assert got.shape == (5, 1280) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # dynamic batch axis: any batch size, and one image alone gives its row of the batch
    assert np.allclose(eng(images[2:3]), got[2:3], rtol=1e-5, atol=1e-5)


def test_auto_is_onnxruntime_on_cpu(mobilenet):
    assert create_engine(mobilenet, "auto", "cpu").name == "onnxruntime"
    assert create_engine(mobilenet, "torch", "cpu").name == "torch"


def test_export_happens_once_per_config(mobilenet, cache, monkeypatch):
    import visclust.engines as engines

    calls = []
    real = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **k: calls.append(1) or real(*a, **k))
    create_engine(mobilenet, "onnx", "cpu")
    create_engine(mobilenet, "onnx", "cpu")
    assert len(calls) == 1
    assert [p.name for p in cache.iterdir()] == [f"{mobilenet.config.cache_key()}-v1.onnx"]
    other = create_backbone("torchvision/mobilenet_v2", pretrained=False, seed=4)  # other weights: other file
    create_engine(other, "onnx", "cpu")
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2


def test_a_damaged_cached_export_is_exported_again(mobilenet, cache, images):
    first = create_engine(mobilenet, "onnx", "cpu")
    with open(first.path, "r+b") as f:
        f.truncate(os.path.getsize(first.path) // 2)
    again = create_engine(mobilenet, "onnx", "cpu")
    assert isinstance(again, OnnxEngine)
    assert np.allclose(again(images[:2]), TorchEngine(mobilenet, "cpu")(images[:2]), atol=1e-4)


def test_failed_verification_falls_back_to_pytorch_with_a_warning(mobilenet, cache, monkeypatch):
    import visclust.engines as engines

    monkeypatch.setattr(engines, "VERIFY_RTOL", -1.0)  # no difference is small enough
    with pytest.warns(EngineFallbackWarning, match="differ from PyTorch"):
        eng = create_engine(mobilenet, "auto", "cpu")
    assert isinstance(eng, TorchEngine)


def test_failed_export_falls_back_to_pytorch_with_a_warning(cache, monkeypatch):
    import visclust.engines as engines

    bb = create_backbone("baseline/pixels")

    def broken(*a, **k):
        raise RuntimeError("exporter cannot handle this model")

    monkeypatch.setattr(engines, "export_onnx", broken)
    with pytest.warns(EngineFallbackWarning, match="exporter cannot handle"):
        eng = create_engine(bb, "onnx", "cpu")
    assert eng.name == "torch"


def test_export_is_atomic(mobilenet, tmp_path):
    path = export_onnx(mobilenet, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == ["m.onnx"] and os.path.getsize(path) > 1_000_000


@pytest.mark.parametrize("bad", [np.zeros((2, 224, 224, 3), np.float32), np.zeros((2, 3, 224, 224), np.uint8)])
def test_engines_refuse_batches_of_the_wrong_layout(mobilenet, bad):
    for eng in (TorchEngine(mobilenet, "cpu"), create_engine(mobilenet, "onnx", "cpu")):
        with pytest.raises(InputError, match=r"\(n, height, width, 3\) uint8"):
            eng(bad)


def test_unknown_engine_and_onnx_on_cuda_are_clear_errors(mobilenet):
    with pytest.raises(InputError, match="auto, torch, onnx"):
        create_engine(mobilenet, "tensorrt")
    with pytest.raises(InputError, match="CPU only"):
        create_engine(mobilenet, "onnx", "cuda")


def test_shared_mobilenet_onnx_equals_pytorch_on_real_photos(mobilenet_weights, shared):
    """The real pretrained weights: ONNX Runtime features of real photos equal PyTorch's."""
    from visclust.features import extract_features
    from visclust.io import collect_inputs

    bb = create_backbone("torchvision/mobilenet_v2", weights=mobilenet_weights)
    paths = collect_inputs([shared / "data/photos"])
    a = extract_features(bb, paths, engine="onnx", num_workers=0).features
    b = extract_features(bb, paths, engine="torch", num_workers=0).features
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.gpu
def test_cuda_engine_bf16_channels_last_agrees_with_fp32():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    bb = create_backbone("torchvision/resnet50", pretrained=False)
    x = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    fast = TorchEngine(bb, "cuda")
    assert fast.amp and fast.channels_last
    ref = TorchEngine(bb, "cpu")(x)
    got = fast(x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
