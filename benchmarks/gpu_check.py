"""Everything visclust does on a GPU, checked and timed in one run (for a short GPU lease).

Sections, each guarded (a failure is printed and the next section runs) and skipped when
the time budget left is too short:

  env       torch / torchvision / GPU name / driver
  jpegs     N photo-like 500x375 JPEGs (random crops of the photos in --photos, quality 90),
            written by one process per core
  probe     (not by default) benchmarks/nvimgcodec_probe.py in a subprocess: per-step times of
            nvImageCodec decoding as visclust runs it
  model     model-only ResNet-50 (random weights) at batch B on GPU-resident random input:
            plain module fp32, bf16 autocast + channels_last, and visclust's TorchEngine
            (normalisation + bf16 + channels_last + copy of the features to the host): the
            engine's figure is the ceiling the end-to-end ratio is taken against
  decode    decode + resize to 224 only: PIL (visclust.io.load_image + resize_crop) on one
            process per core, and nvJPEG (torchvision.io.decode_jpeg(device='cuda') in
            batches of B + visclust's GPU resize) from bytes already in memory; NVIDIA
            nvImageCodec when installed (pixels against torchvision's, decode only with a
            share of 1 / 0 / 0.7 of each batch offered to the hardware JPEG decoder, and
            decode + resize through visclust)
  e2e       visclust.features.compute_features from the JPEG files into a fresh feature
            store: decode='torch' (GPU decoding) and decode='pil' (CPU workers); plus
            decode='torch' without a store (extract_features) to see the store's share;
            decode='nvimgcodec' (--e2e names the variants: DECODER[-nostore][-512][-hwX][-tN],
            e.g. torch, torch-nostore, pil, nvimgcodec-hw0.7-t2: no store, batch 2 x B, share X
            to the hardware JPEG decoder, N decoding threads)
  kmeans    visclust.kmeans.KMeans on CUDA, 1,000,000 x 768, k=1000: seconds per Lloyd /
            Hamerly iteration in float32 and bfloat16 ((t[m] - t[1]) / (m - 1), tol=0, from
            the same initial centers), objectives
  tests     pytest -m gpu (the CUDA tests of the suite)
  compile   TorchEngine(compile=True): compile time, model-only, and end to end with each
            of --compile-decoders
  pipeline  (not by default) end to end eager and compiled, with the seconds each thread
            waits (for files, for nvJPEG, for decoded batches, for features, for the store)
  disk      (not by default) write + fsync speed of the folder the store goes to

In ``model``, ``plain`` (a section name) adds the plain-module fp32 / bf16 figures.

Usage::

    python benchmarks/gpu_check.py --photos DIR --out DIR            # the whole check
    python benchmarks/gpu_check.py --photos DIR --quick --device cpu # plumbing check on a CPU

Prints one ``RESULT`` line per figure and a table at the end; writes results.json to --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

RESULTS: dict = {}
T_START = time.perf_counter()


def say(*a):
    print(*a, flush=True)


def result(key, value, unit="", note=""):
    RESULTS[key] = value
    say(f"RESULT {key} = {value:.4g} {unit} {note}".rstrip() if isinstance(value, float) else
        f"RESULT {key} = {value} {unit} {note}".rstrip())


def left(budget):
    return budget - (time.perf_counter() - T_START)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- jpegs


def _make_some(args):
    photos, out_dir, start, stop, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    srcs = [Image.open(p).convert("RGB") for p in photos]
    for i in range(start, stop):
        im = srcs[rng.integers(len(srcs))]
        w, h = im.size
        frac = rng.uniform(0.35, 1.0)  # crop a 4:3 box covering frac of the shorter side
        cw = min(w, int(min(w, h * 4 / 3) * frac))
        ch = int(cw * 3 / 4)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if i % 4 == 3:
            crop = crop.transpose(Image.ROTATE_90)  # some portrait 375x500 files
        arr = np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)  # colour cast
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(os.path.join(out_dir, f"{i:07d}.jpg"), quality=90)
    return stop - start


def make_jpegs(photos, out_dir, n, procs):
    from multiprocessing import Pool

    os.makedirs(out_dir, exist_ok=True)
    bounds = np.linspace(0, n, procs * 4 + 1).astype(int)
    jobs = [(photos, out_dir, int(a), int(b), k) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    t = time.perf_counter()
    with Pool(procs) as pool:
        made = sum(pool.map(_make_some, jobs))
    paths = sorted(glob.glob(os.path.join(out_dir, "*.jpg")))
    sizes = [os.path.getsize(p) for p in paths[:2000]]
    say(f"made {made} JPEGs in {time.perf_counter() - t:.1f} s, mean {np.mean(sizes) / 1024:.1f} KiB")
    return paths


# --------------------------------------------------------------------------- model only


def time_loop(fn, device, seconds, min_iters=5):
    fn()
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(device)
    return n, time.perf_counter() - t0


def model_only(backbone, device, batch, seconds, plain=True):
    import torch

    from visclust.engines import TorchEngine

    out = {}
    if not plain:
        eng = TorchEngine(backbone, device)
        x8 = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
        n, dt = time_loop(lambda: eng.forward_nchw(x8), device, seconds)
        return {"engine": n * batch / dt}, eng
    x8 = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    xf = torch.randn(batch, 3, 224, 224, device=device)
    net = backbone.module.to(device).eval()
    with torch.inference_mode():
        n, dt = time_loop(lambda: net(xf), device, seconds)
        out["plain_fp32"] = n * batch / dt
        if device.type == "cuda":
            net_cl = net.to(memory_format=torch.channels_last)
            xcl = xf.contiguous(memory_format=torch.channels_last)

            def bf16():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return net_cl(xcl)

            n, dt = time_loop(bf16, device, seconds)
            out["plain_bf16_channels_last"] = n * batch / dt
            net.to(memory_format=torch.contiguous_format)
    eng = TorchEngine(backbone, device)
    n, dt = time_loop(lambda: eng.forward_nchw(x8), device, seconds)
    out["engine"] = n * batch / dt
    say(f"engine: {eng!r}")
    return out, eng


# --------------------------------------------------------------------------- decode only


def _pil_some(args):
    paths, size = args
    from visclust.backbones import Preprocess
    from visclust.features import resize_crop
    from visclust.io import load_image

    pre = Preprocess(input_size=size, resize_size=round(size * 256 / 224))
    for p in paths:
        np.asarray(resize_crop(load_image(p, draft_size=pre.resize_size), pre))
    return len(paths)


def decode_pil(paths, procs):
    from multiprocessing import Pool

    parts = [(paths[i::procs], 224) for i in range(procs)]
    with Pool(procs) as pool:
        pool.map(_pil_some, [(p[0][:2], 224) for p in parts])  # warm: imports
        t = time.perf_counter()
        n = sum(pool.map(_pil_some, parts))
        return n / (time.perf_counter() - t)


def encoded_batches(blobs, batch):
    """visclust Batches of raw JPEGs only (as the GPU readers hand them over), ``batch`` files each."""
    import torch

    from visclust.features import Batch

    out = []
    for s in range(0, len(blobs), batch):
        part = blobs[s:s + batch]
        off = np.zeros(len(part) + 1, np.int64)
        np.cumsum([len(b) for b in part], out=off[1:])
        out.append(Batch(np.zeros(0, np.int64), torch.zeros((0, 224, 224, 3), dtype=torch.uint8), [], [],
                         torch.from_numpy(np.concatenate(part)), off, np.arange(s, s + len(part)), [None] * len(part)))
    return out


def decode_gpu(paths, device, batch):
    from visclust.backbones import Preprocess
    from visclust.features import _decode_encoded

    pre = Preprocess(input_size=224, resize_size=256)
    batches = encoded_batches([np.fromfile(p, dtype=np.uint8) for p in paths], batch)

    def run(resize):
        from torchvision.io import ImageReadMode, decode_jpeg

        n = 0
        for b in batches:
            if resize:
                _, _, x = _decode_encoded(b, paths, pre, device)
                n += len(x)
            else:
                n += len(decode_jpeg(b.encoded_files(), mode=ImageReadMode.RGB, device=device))
        sync(device)
        return n

    run(True)  # warm: nvJPEG handles, kernels
    out = {}
    for key, resize in (("gpu_decode_only", False), ("gpu_decode_resize", True)):
        t = time.perf_counter()
        n = run(resize)
        out[key] = n / (time.perf_counter() - t)
    return out


def decode_nvimgcodec(paths, device, batch, hw_loads=(1.0, 0.0, 0.7)):
    """nvImageCodec: a check against torchvision's pixels, then decode only (per share of the
    hardware decoder) and decode + resize through visclust (``_decode_encoded``)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from visclust import features as F
    from visclust.backbones import Preprocess

    pre = Preprocess(input_size=224, resize_size=256)
    blobs = [np.fromfile(p, dtype=np.uint8) for p in paths]
    out = {}
    idx = device.index or 0
    ref = decode_jpeg([torch.from_numpy(b) for b in blobs[:8]], mode=ImageReadMode.RGB, device=device)
    got = F._nvimgcodec_decode([torch.from_numpy(b) for b in blobs[:8]], device)
    diffs = [(a.int() - b.int()).abs() for a, b in zip(ref, got)]
    out["nvimgcodec_vs_torchvision_max_abs"] = max(int(d.max()) for d in diffs)
    out["nvimgcodec_vs_torchvision_mean_abs"] = float(np.mean([float(d.float().mean()) for d in diffs]))
    say(f"  pixels vs torchvision: max {out['nvimgcodec_vs_torchvision_max_abs']}, "
        f"mean {out['nvimgcodec_vs_torchvision_mean_abs']:.3f}; shapes {[tuple(g.shape) for g in got[:2]]}")
    from nvidia import nvimgcodec

    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.RGB)
    stream = torch.cuda.current_stream(device)
    for load in hw_loads:
        dec = F.nvimgcodec_decoder(idx, load)
        dec.decode(blobs[:batch], params=params, cuda_stream=stream.cuda_stream)  # warm
        sync(device)
        t, n = time.perf_counter(), 0
        for s in range(0, len(blobs), batch):
            n += sum(im is not None for im in dec.decode(blobs[s:s + batch], params=params,
                                                          cuda_stream=stream.cuda_stream))
        sync(device)
        out[f"nvimgcodec_decode_only_hw{load:g}"] = n / (time.perf_counter() - t)
        say(f"  decode only, hardware share {load:g}: {out[f'nvimgcodec_decode_only_hw{load:g}']:.0f} img/s")
    t, n = time.perf_counter(), 0
    for b in encoded_batches(blobs, batch):
        n += len(F._decode_encoded(b, paths, pre, device, "nvimgcodec")[2])
    sync(device)
    out["nvimgcodec_decode_resize"] = n / (time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------- end to end


def e2e(backbone, eng, paths, batch, workers, decode, store=True):
    from visclust.features import compute_features, extract_features

    root = tempfile.mkdtemp(prefix="visclust-gpu-store-")
    try:
        t = time.perf_counter()
        if store:
            st = compute_features(backbone, paths, root, batch_size=batch, num_workers=workers, engine=eng,
                                  progress=False, decode=decode)
            n, skipped = st.n_computed, len(st.skipped)
        else:
            r = extract_features(backbone, paths, batch_size=batch, num_workers=workers, engine=eng, progress=False,
                                 decode=decode)
            n, skipped = len(r.paths), len(r.skipped)
        dt = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if skipped:
        say(f"  {skipped} skipped")
    return n / dt, n, dt


class Waits:
    """Seconds each thread of an extraction spends waiting, by patching visclust's functions."""

    def __init__(self):
        import collections

        self.t = collections.defaultdict(float)

    def _timed_iter(self, gen, key):
        while True:
            t = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                return
            finally:
                self.t[key] += time.perf_counter() - t
            yield item

    def install(self):
        import visclust.engines as E
        import visclust.features as F
        import visclust.store as S

        threaded, batches, dec = F._threaded, F.iter_batches, F._decode_encoded
        result_, wait_ = E.PendingFeatures.result, S.ShardWriter._wait
        w = self

        def timed_threaded(items, prefetch, low_priority=True):
            key = "main: waits for GPU-decoded batch" if not low_priority else "main: waits for decoded batch"
            return w._timed_iter(threaded(items, prefetch, low_priority), key)

        def timed_batches(*a, **k):
            return w._timed_iter(batches(*a, **k), "decode thread: waits for workers' files")

        def timed(fn, key):
            def call(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    w.t[key] += time.perf_counter() - t
            return call

        timed_decode = timed(dec, "decode thread: in _decode_encoded")
        timed_result = timed(result_, "main: waits for features (GPU)")
        timed_wait = timed(wait_, "main: waits for store commit")

        F._threaded, F.iter_batches, F._decode_encoded = timed_threaded, timed_batches, timed_decode
        E.PendingFeatures.result, S.ShardWriter._wait = timed_result, timed_wait

    def report(self):
        out = {k: round(v, 3) for k, v in sorted(self.t.items())}
        self.t.clear()
        return out


def disk_write_speed(folder, mb=32, n=10):
    data = np.random.default_rng(0).integers(0, 255, mb << 20, dtype=np.uint8).tobytes()
    path = os.path.join(folder, "disk-speed.bin")
    t = time.perf_counter()
    for _ in range(n):
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    dt = time.perf_counter() - t
    os.unlink(path)
    return mb * n / dt


# --------------------------------------------------------------------------- k-means


def kmeans_iters(n, d, k, m, device):
    import torch

    from visclust.kmeans import KMeans

    g = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(n, d, device=device, generator=g)
    X += torch.randn(100, d, device=device, generator=g)[torch.randint(0, 100, (n,), device=device, generator=g)]
    X = X.cpu().numpy()
    C = X[np.random.default_rng(0).choice(n, k, replace=False)].copy()
    out = {}
    for algo in ("lloyd", "hamerly"):
        for dtype in ("float32", "bfloat16"):
            def fit(iters):
                t = time.perf_counter()
                km = KMeans(k, init=C, n_init=1, max_iter=iters, tol=0, algorithm=algo, device=device.type,
                            dtype=dtype).fit(X)
                sync(device)
                return time.perf_counter() - t, km

            fit(1)
            t1 = min(fit(1)[0] for _ in range(3))
            runs = [fit(m) for _ in range(3)]
            tm, km = min(runs, key=lambda r: r[0])
            key = f"{algo}_{dtype}"
            out[f"{key}_ms_per_iter"] = 1000 * (tm - t1) / (km.n_iter_ - 1)
            out[f"{key}_inertia"] = float(km.inertia_)
            out[f"{key}_n_iter"] = int(km.n_iter_)
            say(f"  {key}: {out[f'{key}_ms_per_iter']:.1f} ms/iter (t1 {t1:.2f} s, t{m} {tm:.2f} s, "
                f"n_iter {km.n_iter_}), inertia {km.inertia_:.6g}")
    if device.type == "cuda":  # where one float32 Lloyd iteration spends its time
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            KMeans(k, init=C, n_init=1, max_iter=3, tol=0, algorithm="lloyd", device="cuda").fit(X)
            sync(device)
        say(prof.key_averages().table(sort_by="device_time_total", row_limit=14, max_name_column_width=60))
    ref = out["lloyd_float32_inertia"]
    for key in ("lloyd_bfloat16", "hamerly_float32", "hamerly_bfloat16"):
        out[f"{key}_objective_rel_diff"] = abs(out[f"{key}_inertia"] / ref - 1)
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", required=True, help="folder of source photos for the JPEGs")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="where results.json goes")
    ap.add_argument("--images", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (a plumbing check)")
    ap.add_argument("--budget", type=float, default=420, help="seconds; later sections are skipped past it")
    ap.add_argument("--sections", default="env,jpegs,model,plain,decode,e2e,kmeans,tests,compile",
                    help="also: pipeline (end to end eager and compiled, with each thread's waits), disk")
    ap.add_argument("--e2e", default="torch,torch-nostore,torch-512,pil", help="end-to-end variants, in order")
    ap.add_argument("--compile-decoders", default="torch,nvimgcodec", help="decoders of the compiled end-to-end runs")
    ap.add_argument("--workdir", default=None, help="where the JPEGs go (default a temp dir)")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    import torch

    device = torch.device(args.device)
    procs = os.cpu_count() or 1
    n_img = min(512, args.images) if args.quick else args.images
    batch = 32 if args.quick else args.batch
    secs = 1.0 if args.quick else 4.0
    work = args.workdir or tempfile.mkdtemp(prefix="visclust-gpu-")
    os.makedirs(args.out, exist_ok=True)

    def guarded(name, need, fn):
        if name not in sections:
            return None
        if left(args.budget) < need:
            say(f"\n## {name}: SKIPPED ({left(args.budget):.0f} s left, needs ~{need} s)")
            RESULTS[f"{name}_skipped"] = True
            return None
        say(f"\n## {name} (t={time.perf_counter() - T_START:.0f} s)")
        t = time.perf_counter()
        try:
            return fn()
        except Exception:
            say(f"{name} FAILED:\n{traceback.format_exc()}")
            RESULTS[f"{name}_failed"] = traceback.format_exc(limit=3)
            return None
        finally:
            say(f"## {name} took {time.perf_counter() - t:.1f} s")
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(RESULTS, f, indent=1, default=str)

    def env():
        import torchvision

        RESULTS.update(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                       cpus=procs, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        if device.type == "cuda":
            RESULTS["gpu"] = torch.cuda.get_device_name(device)
            try:
                RESULTS["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as e:  # noqa: BLE001
                RESULTS["nvidia_smi"] = repr(e)
        say(json.dumps(RESULTS, indent=1))

    guarded("env", 0, env)
    photos = sorted(p for p in glob.glob(os.path.join(args.photos, "*")) if p.lower().endswith((".jpg", ".png")))
    paths = guarded("jpegs", 30, lambda: make_jpegs(photos, os.path.join(work, "jpegs"), n_img, procs)) or []

    def probe():
        """benchmarks/nvimgcodec_probe.py in its own process."""
        from visclust import features as F

        if device.type != "cuda" or not F.nvimgcodec_available():
            say("  needs CUDA and nvImageCodec")
            return
        r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "nvimgcodec_probe.py"), os.path.dirname(paths[0]),
                            "--batch", str(batch)], capture_output=True, text=True, timeout=120)
        say(r.stdout[-3000:] + r.stderr[-3000:])
        RESULTS["nvimgcodec_probe"] = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]

    guarded("probe", 30, probe)
    from visclust.backbones import create_backbone

    backbone = create_backbone("torchvision/resnet50", pretrained=False)
    eng = None

    def model():
        nonlocal eng
        out, eng = model_only(backbone, device, batch, secs, plain="plain" in sections)
        for k, v in out.items():
            result(f"model_only_{k}", v, "img/s", f"(ResNet-50, batch {batch})")

    guarded("model", 40, model)

    def decode():
        result("pil_decode_resize", decode_pil(paths[: min(len(paths), 8000)], procs), "img/s",
               f"({procs} processes, 500x375 -> 224)")
        if device.type == "cuda":
            for k, v in decode_gpu(paths[: min(len(paths), 20000)], device, batch).items():
                result(k, v, "img/s", f"(batches of {batch})")
            from visclust.features import nvimgcodec_available

            if not nvimgcodec_available():
                say("  nvImageCodec: not installed")
                return
            for k, v in decode_nvimgcodec(paths[: min(len(paths), 20000)], device, batch).items():
                result(k, v, "img/s" if "abs" not in k else "", f"(batches of {batch})")

    guarded("decode", 40, decode)

    def end_to_end():
        from visclust.engines import TorchEngine

        e = eng or TorchEngine(backbone, device)
        ceiling = RESULTS.get("model_only_engine")
        from visclust import features as F

        for v in args.e2e.split(","):
            # DECODER[-nostore][-512][-hwX][-tN]: no store, batch 2 x B, share X of each batch
            # to the hardware JPEG decoder (nvimgcodec), N decoding threads
            decode, *opts = v.split("-")
            store, bs, hw, threads = "nostore" not in opts, (2 * batch if "512" in opts else batch), None, 1
            for o in opts:
                hw = float(o[2:]) if o.startswith("hw") else hw
                threads = int(o[1:]) if o.startswith("t") and o[1:].isdigit() else threads
            if left(args.budget) < 30:
                say(f"  skipped {v}: out of time")
                continue
            if decode == "nvimgcodec" and not F.nvimgcodec_available():
                say("  skipped decode=nvimgcodec: not installed")
                continue
            F.NVIMGCODEC_HW_LOAD, F.GPU_DECODE_THREADS = (1.0 if hw is None else hw), threads
            try:
                rate, n, dt = e2e(backbone, e, paths, bs, procs, decode, store)
            finally:
                F.NVIMGCODEC_HW_LOAD, F.GPU_DECODE_THREADS = 1.0, 1
            key = f"e2e_{decode}_decode" + ("" if hw is None else f"_hw{hw:g}") + ("" if threads == 1 else f"_t{threads}") \
                + ("" if store else "_no_store") + ("" if bs == batch else f"_batch{bs}")
            key += f"_run{sum(k.startswith(key) and not k.endswith('ratio') for k in RESULTS) + 1}"
            result(key, rate, "img/s", f"({n} images in {dt:.1f} s, {procs} workers, batch {bs})")
            if ceiling:
                result(f"{key}_ratio", rate / ceiling, "", "(/ engine model-only)")
        after, _ = model_only(backbone, device, batch, secs)
        result("model_only_engine_after", after["engine"], "img/s")

    guarded("e2e", 60, end_to_end)

    def compiled_engine():
        """TorchEngine(compile=True), compiled on a first batch; records compile time and model-only."""
        from visclust.engines import TorchEngine

        t = time.perf_counter()
        ce = TorchEngine(backbone, device, compile=True)
        x8 = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
        ce.forward_nchw(x8)
        sync(device)
        result("compile_seconds", time.perf_counter() - t, "s")
        n, dt = time_loop(lambda: ce.forward_nchw(x8), device, secs)
        result("model_only_engine_compiled", n * batch / dt, "img/s")
        return ce

    def pipeline():
        """End to end, eager and compiled, with where each thread waits."""
        from visclust.engines import TorchEngine

        waits = Waits()
        waits.install()
        engines = {"eager": eng or TorchEngine(backbone, device)}
        ce = compiled_engine()
        engines["compiled"] = ce
        torch._logging.set_logs(recompiles=True)
        for name, store in (("eager", False), ("eager", True), ("compiled", True)):
            if left(args.budget) < 25:
                say(f"  skipped {name} store={store}: out of time")
                continue
            rate, n, dt = e2e(backbone, engines[name], paths, batch, procs, "torch", store)
            key = f"e2e_{name}" + ("" if store else "_no_store")
            result(key, rate, "img/s", f"({n} images in {dt:.1f} s; ratio to eager model-only "
                   f"{rate / RESULTS.get('model_only_engine', float('nan')):.3f})")
            RESULTS[key + "_waits"] = waits.report()
            say(f"  waits: {RESULTS[key + '_waits']}")

    guarded("pipeline", 60, pipeline)
    guarded("disk", 10, lambda: result("disk_write_fsync", disk_write_speed(work), "MB/s", "(32 MB files, fsync each)"))

    def kmeans():
        n, d, k, m = (20_000, 64, 50, 4) if args.quick else (1_000_000, 768, 1000, 21)
        say(f"  {n:,} x {d}, k={k}, max_iter 1 and {m}")
        for key, v in kmeans_iters(n, d, k, m, device).items():
            RESULTS[f"kmeans_{key}"] = v

    guarded("kmeans", 60, kmeans)

    def tests():
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        env_ = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (os.path.join(root, "src"), os.environ.get("PYTHONPATH")) if p))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                            "tests/test_engines.py", "tests/test_kmeans.py", "tests/test_features.py"],
                           cwd=root, env=env_, capture_output=True, text=True, timeout=max(30, left(args.budget) - 5))
        say(r.stdout[-4000:] + r.stderr[-2000:])
        RESULTS["gpu_tests_rc"] = r.returncode
        RESULTS["gpu_tests_summary"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    guarded("tests", 40, tests)

    def compiled():
        ce = compiled_engine()
        torch._logging.set_logs(recompiles=True)  # a recompilation inside the timed run would show here
        from visclust.features import nvimgcodec_available

        for decode in args.compile_decoders.split(","):
            if decode == "nvimgcodec" and not nvimgcodec_available():
                continue
            for run in (1, 2):
                if left(args.budget) < 20:
                    break
                rate, n, dt = e2e(backbone, ce, paths, batch, procs, decode, True)
                key = f"e2e_{decode}_decode_compiled_run{run}"
                result(key, rate, "img/s", f"({n} images in {dt:.1f} s)")
                if RESULTS.get("model_only_engine"):
                    result(f"{key}_ratio_to_eager", rate / RESULTS["model_only_engine"], "")

    guarded("compile", 90, compiled)
    RESULTS["total_seconds"] = time.perf_counter() - T_START
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    say("\n# summary")
    for k, v in RESULTS.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            say(f"{k:50s} {v:.6g}" if isinstance(v, float) else f"{k:50s} {v}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
