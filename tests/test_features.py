"""Images -> features: preprocessing, batching, workers, GPU-style decoding, the store, the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from visclust.backbones import Preprocess, create_backbone
from visclust.exceptions import InputError
from visclust.features import extract_features, iter_batches, preprocess_image, resize_crop
from visclust.io import collect_inputs


@pytest.fixture(scope="module")
def mobilenet():
    return create_backbone("torchvision/mobilenet_v2", pretrained=False, seed=0)


def photo(size, seed=0) -> Image.Image:
    """A smooth random image (sharp noise would exaggerate resampling differences)."""
    w, h = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.mark.parametrize("size", [(32, 32), (300, 200), (200, 500), (224, 224), (256, 256), (231, 400)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_resize_crop_in_one_call_equals_resize_then_crop(size, interp):
    pre = Preprocess(input_size=224, resize_size=256, interpolation=interp)
    img = photo(size)
    w, h = size
    scale = 256 / min(w, h)
    nw, nh = max(224, round(w * scale)), max(224, round(h * scale))
    full = img.resize((nw, nh), Image.BILINEAR if interp == "bilinear" else Image.BICUBIC)
    left, top = (nw - 224) // 2, (nh - 224) // 2
    expected = np.asarray(full.crop((left, top, left + 224, top + 224)))
    got = preprocess_image(img, pre)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - expected)
    # the same pixels up to float rounding (bicubic rounds twice, once per pass)
    assert diff.max() <= 2 and diff.mean() < 0.25


def test_large_downscale_stays_close_to_the_exact_filter():
    pre = Preprocess(input_size=224, resize_size=256)
    img = photo((2000, 1500))
    exact = np.asarray(img.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240)), dtype=int)
    assert np.abs(np.asarray(resize_crop(img, pre), dtype=int) - exact).mean() < 2.0


def write_mixed(root):
    """Readable PNG/JPEG/greyscale/RGBA images of different sizes plus two bad files."""
    root.mkdir()
    names = []
    for i, (size, mode, ext) in enumerate([((64, 48), "RGB", "jpg"), ((40, 90), "RGB", "png"), ((50, 50), "L", "jpg"),
                                           ((33, 61), "RGBA", "png"), ((300, 220), "RGB", "jpg"), ((48, 48), "RGB", "bmp")]):
        p = root / f"{i}.{ext}"
        photo(size, seed=i).convert(mode).save(p)
        names.append(str(p))
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    (root / "empty.png").write_bytes(b"")
    return sorted(names + [str(root / "bad.jpg"), str(root / "empty.png")])


def test_order_is_kept_and_bad_files_are_reported(tmp_path, mobilenet):
    paths = write_mixed(tmp_path / "imgs")
    res = extract_features(mobilenet, paths, engine="torch", num_workers=0, batch_size=3)
    assert res.paths == [p for p in paths if not p.endswith(("bad.jpg", "empty.png"))]
    assert [p for p, _ in res.skipped] == [str(tmp_path / "imgs" / "bad.jpg"), str(tmp_path / "imgs" / "empty.png")]
    assert all(reason.startswith(p) for p, reason in res.skipped)
    assert res.features.shape == (6, 1280) and np.isfinite(res.features).all()


@pytest.mark.parametrize("workers,batch", [(1, 4), (2, 1), (0, 64)])
def test_workers_and_batch_size_do_not_change_the_features(tmp_path, mobilenet, workers, batch):
    paths = write_mixed(tmp_path / "imgs")
    ref = extract_features(mobilenet, paths, engine="torch", num_workers=0, batch_size=2)
    got = extract_features(mobilenet, paths, engine="torch", num_workers=workers, batch_size=batch)
    assert got.paths == ref.paths and got.skipped == ref.skipped
    assert np.allclose(got.features, ref.features, rtol=1e-4, atol=1e-5)


def test_batches_are_uint8_nhwc_without_per_image_tensors(tmp_path):
    paths = write_mixed(tmp_path / "imgs")
    pre = Preprocess(input_size=32, resize_size=36)
    batches = list(iter_batches(paths, pre, batch_size=5, num_workers=1))
    assert [len(b.indices) + len(b.failed) for b in batches] == [5, 3]
    assert batches[0].images.dtype.is_floating_point is False
    assert tuple(batches[0].images.shape) == (len(batches[0].indices), 32, 32, 3)
    assert all(st is not None and st[0] > 0 for b in batches for st in b.stats)


def test_torch_decoding_is_close_to_pil_and_falls_back_for_other_files(tmp_path, mobilenet):
    """decode='torch' (the GPU path: torchvision.io.decode_jpeg + tensor resize), run on CPU."""
    paths = write_mixed(tmp_path / "imgs")
    pil = extract_features(mobilenet, paths, engine="torch", num_workers=0, batch_size=4, decode="pil")
    tv = extract_features(mobilenet, paths, engine="torch", num_workers=1, batch_size=4, decode="torch")
    assert tv.paths == pil.paths and [p for p, _ in tv.skipped] == [p for p, _ in pil.skipped]
    a, b = pil.features, tv.features
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95


def test_several_decoding_threads_keep_every_row_with_its_file(tmp_path, mobilenet, monkeypatch):
    """GPU_DECODE_THREADS > 1: batches decoded at once by a pool each come back once, every row
    with its file."""
    from visclust import features as F

    paths = write_mixed(tmp_path / "mixed")
    for i in range(23):  # batches of 4 of different images, so a swap would show
        p = tmp_path / f"{i:02d}.jpg"
        photo((60 + 7 * i, 50 + 3 * i), seed=i).save(p, quality=90)
        paths.append(str(p))
    one = extract_features(mobilenet, paths, engine="torch", num_workers=1, batch_size=4, decode="torch")
    monkeypatch.setattr(F, "GPU_DECODE_THREADS", 3)
    three = extract_features(mobilenet, paths, engine="torch", num_workers=1, batch_size=4, decode="torch")
    assert three.paths == one.paths and three.skipped == one.skipped
    assert np.array_equal(three.features, one.features)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1000, 700), (224, 224), (300, 200)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "lanczos"])
def test_tensor_resize_crop_gives_pils_pixels_within_rounding(size, interp):
    """The GPU path's resize (two matrix products) against PIL's, on an image with hard edges."""
    import torch

    from visclust.features import resize_crop_tensor

    pre = Preprocess(input_size=224, resize_size=256, interpolation=interp)
    arr = np.asarray(photo(size, seed=3)).copy()
    arr[::7] = 255  # white lines: overshoot of bicubic/lanczos must be clipped as PIL does
    ref = np.asarray(resize_crop(Image.fromarray(arr), pre)).astype(np.float32)
    got = resize_crop_tensor(torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), pre)[0].permute(1, 2, 0)
    diff = np.abs(got.numpy() - ref)
    # PIL rounds to 8 bits after each pass (these are not rounded): 0.5 + 0.5 x the second
    # pass's largest sum of |coefficients| (1 for bilinear, ~1.25 for bicubic/lanczos upscales)
    assert diff.max() <= (1.01 if interp == "bilinear" else 1.2)
    assert diff.mean() < 0.35


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["torch", "nvimgcodec"])
def test_cuda_pipeline_matches_the_cpu_one_row_for_row(tmp_path, mobilenet, decoder):
    """On CUDA: GPU decoding (nvJPEG through torchvision, or nvImageCodec's hardware decoder)
    in a thread on its own stream, batch k + 1 started before batch k's rows are handed
    over; every row must still belong to its file."""
    import torch

    from visclust.features import nvimgcodec_available

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if decoder == "nvimgcodec" and not nvimgcodec_available():
        pytest.skip("needs NVIDIA nvImageCodec (pip install 'nvidia-nvimgcodec-cu13[nvjpeg]')")
    root = tmp_path / "imgs"
    root.mkdir()
    paths = []
    for i in range(40):
        size = [(500, 375), (375, 500), (320, 240)][i % 3]
        p = root / f"{i:02d}.jpg"
        photo(size, seed=100 + i).save(p, quality=90)
        paths.append(str(p))
    paths += write_mixed(tmp_path / "mixed")  # PNG, greyscale, bad files: the PIL fallback on the way
    from visclust.engines import TorchEngine

    cpu = extract_features(mobilenet, paths, engine="torch", device="cpu", num_workers=0, batch_size=16, decode="pil")
    # float32 on the GPU: this compares decoding and resizing (bf16 has its own test in test_engines)
    eng = TorchEngine(mobilenet, "cuda", amp=False)
    gpu = extract_features(mobilenet, paths, engine=eng, num_workers=2, batch_size=16, decode=decoder)
    assert gpu.paths == cpu.paths and [p for p, _ in gpu.skipped] == [p for p, _ in cpu.skipped]
    mean = cpu.features.mean(0)
    a, b = cpu.features - mean, gpu.features - mean  # what tells the images apart
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    sims = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    assert (sims.argmax(1) == np.arange(len(a))).all(), "a row was handed to another file"
    print(f"centred cosine GPU ({decoder}) vs CPU pipeline: min {cos.min():.4f}, median {np.median(cos):.4f}")
    # Measured on an H200 (2026-12-04): min 0.844, median 0.984, in bf16 and in float32 alike:
    # nvJPEG's pixels differ from libjpeg's (decode='torch' on the CPU, with libjpeg, gives
    # 0.999), and random weights magnify small pixel differences. The row-for-row check above
    # is the one that catches a pipeline bug.
    assert cos.min() > 0.8 and np.median(cos) > 0.95, np.sort(cos)[:5]


def test_bad_arguments_are_clear_errors(tmp_path, mobilenet):
    paths = write_mixed(tmp_path / "imgs")[:2]
    with pytest.raises(InputError, match="batch size"):
        extract_features(mobilenet, paths, engine="torch", batch_size=0)
    with pytest.raises(InputError, match="decoder"):
        extract_features(mobilenet, paths, engine="torch", decode="nvjpeg")
    with pytest.raises(InputError, match="CUDA GPU; on the CPU use decode='pil'"):
        extract_features(mobilenet, paths, engine="torch", device="cpu", decode="nvimgcodec")
    with pytest.raises(InputError, match="CUDA GPU"):  # refused before the store is made
        extract_features(mobilenet, paths, engine="onnx", device="cpu", decode="nvimgcodec", store=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError, match="workers"):
        extract_features(mobilenet, paths, engine="torch", num_workers=-1)
    with pytest.raises(InputError, match="device"):
        extract_features(mobilenet, paths, engine="torch", device="tpu:9")


def test_store_gives_the_same_features_as_memory(tmp_path, mobilenet):
    paths = write_mixed(tmp_path / "imgs")
    mem = extract_features(mobilenet, paths, engine="onnx", num_workers=0)
    first = extract_features(mobilenet, paths, engine="onnx", num_workers=0, store=tmp_path / "s")
    again = extract_features(mobilenet, paths, engine="onnx", num_workers=0, store=tmp_path / "s")
    for r in (first, again):
        assert r.paths == mem.paths and [p for p, _ in r.skipped] == [p for p, _ in mem.skipped]
        assert np.array_equal(r.features, mem.features)


def test_image_clusterer_uses_the_store(tmp_path, shape_images):
    from visclust.model import ImageClusterer

    store = tmp_path / "store"
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=3, store=str(store), engine="torch", num_workers=0)
    assert m.get_params()["store"] == str(store) and m.get_params()["engine"] == "torch"
    m.fit([shape_images])
    shards = sorted(store.glob("*/shards/*.json"))
    assert len(shards) == 1
    m.assign([shape_images])  # everything is in the store: nothing new written
    assert sorted(store.glob("*/shards/*.json")) == shards


def test_fit_and_predict_reuse_what_extract_stored(tmp_path, shape_images, cli):
    store = tmp_path / "store"
    common = ["--backbone", "baseline/pixels", "--workers", "0", "--store", store]
    r = cli("extract", shape_images, *common)
    assert r.returncode == 0, r.stderr
    shards = sorted(store.glob("*/shards/*.json"))
    r = cli("fit", shape_images, "-k", "3", "-o", tmp_path / "m.vcm", *common)
    assert r.returncode == 0, r.stderr
    assert sorted(store.glob("*/shards/*.json")) == shards  # fit computed nothing
    new = tmp_path / "new"
    new.mkdir()
    os.symlink(next((shape_images / "red_disc").iterdir()), new / "x.png")
    Image.new("RGB", (48, 48), (0, 0, 255)).save(new / "blue.png")
    r = cli("predict", tmp_path / "m.vcm", shape_images, new, "-o", tmp_path / "a.csv", "--workers", "0",
            "--store", store, "--engine", "torch")
    assert r.returncode == 0, r.stderr
    added = sorted(set(store.glob("*/shards/*.json")) - set(shards))
    import json

    # only the two new files were computed (the symlink is a new path, same pixels)
    assert sorted(os.path.basename(p) for m in added for p in json.loads(m.read_text())["paths"]) == ["blue.png", "x.png"]


def test_progress_bar_shows_rate_and_eta_on_a_terminal(tmp_path, shape_images):
    """Run `visclust extract` under a pseudo-terminal: the bar shows img/s; --quiet hides it."""
    import pty
    import subprocess
    import sys

    def run(*extra):
        master, slave = pty.openpty()
        p = subprocess.Popen([sys.executable, "-m", "visclust.cli", "extract", str(shape_images), "--store",
                              str(tmp_path / f"s{len(extra)}"), "--backbone", "baseline/pixels", "--workers", "0",
                              "--engine", "torch", *extra], stdout=slave, stderr=slave)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        p.wait(timeout=300)
        os.close(master)
        return p.returncode, out.decode(errors="replace")

    rc, out = run()
    assert rc == 0 and "img/s" in out and "36/36" in out
    rc, out = run("--quiet")
    assert rc == 0 and out.strip() == ""


def test_cifar_subset_through_the_store_with_real_weights(mobilenet_weights, cifar_small, tmp_path):
    """Real pretrained weights, real JPEGs: the store's features equal an in-memory run."""
    bb = create_backbone("torchvision/mobilenet_v2", weights=mobilenet_weights)
    paths = collect_inputs([cifar_small[1]])
    mem = extract_features(bb, paths, engine="onnx", num_workers=1)
    stored = extract_features(bb, paths, engine="onnx", num_workers=1, store=tmp_path / "s", dtype="float16")
    assert stored.paths == mem.paths == paths
    assert np.allclose(stored.features, mem.features, rtol=2e-3, atol=2e-3)


def test_decoding_thread_keeps_order_and_stops_when_the_consumer_does(tmp_path):
    """workers=0: batches come from one background thread, in order; closing the generator
    early (a Ctrl-C, an error in the model) stops and joins that thread."""
    import threading

    paths = write_mixed(tmp_path / "imgs")
    pre = Preprocess(input_size=32, resize_size=36)
    got = list(iter_batches(paths, pre, batch_size=1, num_workers=0, prefetch=1))
    assert sorted([int(i) for b in got for i in b.indices] + [i for b in got for i, _ in b.failed]) == list(range(8))
    assert [int(b.indices[0]) if len(b.indices) else b.failed[0][0] for b in got] == list(range(8))
    gen = iter_batches(paths, pre, batch_size=1, num_workers=0, prefetch=1)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "visclust-decode"]


def test_decoding_thread_hands_its_errors_to_the_consumer(monkeypatch, tmp_path):
    from visclust import features

    def boom(self, b):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(features.BatchDataset, "__getitem__", boom)
    with pytest.raises(RuntimeError, match="decoder bug"):
        list(iter_batches(write_mixed(tmp_path / "imgs"), Preprocess(input_size=32, resize_size=36), num_workers=0))


@pytest.mark.parametrize("header_parser", ["simplejpeg", "pillow"])
def test_gpu_reader_takes_colour_and_grey_jpegs_only_and_never_opens_a_fifo(tmp_path, monkeypatch, header_parser):
    """The GPU path's reader hands raw bytes to the GPU decoder only for what it can decode;
    everything else (PNG, BMP, CMYK, broken, a FIFO) goes to the CPU path, which reports it."""
    import sys

    from visclust.features import _read_gpu_jpeg

    if header_parser == "pillow":  # simplejpeg not installed: Pillow's open decides
        monkeypatch.setitem(sys.modules, "simplejpeg", None)
    paths = write_mixed(tmp_path / "imgs")
    taken = {os.path.basename(p) for p in paths if _read_gpu_jpeg(p) is not None}
    assert taken == {"0.jpg", "2.jpg", "4.jpg"}
    cmyk = tmp_path / "cmyk.jpg"
    photo((20, 20), seed=9).convert("CMYK").save(cmyk)
    assert _read_gpu_jpeg(str(cmyk)) is None
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    assert _read_gpu_jpeg(str(fifo)) is None  # opening it would block forever
    st, data = _read_gpu_jpeg(paths[0])
    info = os.stat(paths[0])
    assert data.tobytes() == open(paths[0], "rb").read() and st == (info.st_size, info.st_mtime_ns)


@pytest.mark.slow
def test_extract_compile_gives_the_eager_features_and_refuses_onnx_and_ray(tmp_path, shape_images, cli):
    """`visclust extract --compile` (torch.compile, ~25 s on 2 CPU cores) stores the features
    eager PyTorch stores; with the onnx engine or Ray it is a one-line error."""
    from visclust.backbones import create_backbone
    from visclust.store import FeatureStore

    common = ["--backbone", "torchvision/mobilenet_v2", "--random-weights", "--workers", "0", "--device", "cpu",
              "--batch-size", "8", "--quiet"]
    r = cli("extract", shape_images, "--store", tmp_path / "compiled", "--compile", *common)
    assert r.returncode == 0, r.stderr
    r = cli("extract", shape_images, "--store", tmp_path / "eager", "--engine", "torch", *common)
    assert r.returncode == 0, r.stderr
    cfg = create_backbone("torchvision/mobilenet_v2", pretrained=False).config
    rows = [{p: x for ps, X in FeatureStore(tmp_path / name, cfg).iter_rows(mmap=False) for p, x in zip(ps, X)}
            for name in ("compiled", "eager")]
    assert sorted(rows[0]) == sorted(rows[1]) and len(rows[0]) > 0
    a, b = (np.stack([r[p] for p in sorted(rows[0])]) for r in rows)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    for extra, msg in ((["--engine", "onnx"], "applies to the torch engine"), (["--executor", "ray"], "not available with --executor ray")):
        r = cli("extract", shape_images, "--store", tmp_path / "x", "--compile", *extra, *common)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
