"""Where the time goes when nvImageCodec decodes a batch for visclust (run on a CUDA GPU).

    python benchmarks/nvimgcodec_probe.py JPEG_DIR [--batch 256] [--images 8192]

For each way of turning nvimgcodec.Image's into tensors (visclust.features.NVIMGCODEC_VIEW:
'cai', 'dlpack'), times per image: the decode call, waiting for the GPU, the conversion,
the stack into one batch per image size, visclust's resize, freeing the decoded images; checks the pixels against torchvision's
nvJPEG. Prints one JSON line per way, then the name of the fastest that worked. Run it in
its own process: a conversion that breaks leaves the CUDA context unusable.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--hw-loads", default="1,0.7")
    args = ap.parse_args(argv)
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from visclust import features as F
    from visclust.backbones import Preprocess

    dev = torch.device("cuda")
    pre = Preprocess(input_size=224, resize_size=256)
    paths = sorted(glob.glob(os.path.join(args.folder, "**", "*.jpg"), recursive=True))[: args.images]
    blobs = [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p in paths]
    batches = [blobs[s:s + args.batch] for s in range(0, len(blobs), args.batch)]
    ref = decode_jpeg(blobs[:16], mode=ImageReadMode.RGB, device=dev)
    from nvidia import nvimgcodec

    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.RGB)
    for load in (float(x) for x in args.hw_loads.split(",")):
        F.NVIMGCODEC_HW_LOAD = load
        dec = F.nvimgcodec_decoder(0, load)
        t = dict.fromkeys(("decode", "wait", "view", "stack", "resize", "free"), 0.0)
        try:
            got = F._nvimgcodec_decode(blobs[:16], dev)
            diff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(ref, got))
            del got
            for k, files in enumerate(batches + batches[:1]):  # the first batch again, as warm-up
                t0 = time.perf_counter()
                out = dec.decode([f.numpy() for f in files], params=params,
                                 cuda_stream=torch.cuda.current_stream(dev).cuda_stream)
                t1 = time.perf_counter()
                torch.cuda.synchronize(dev)
                t2 = time.perf_counter()
                imgs = [F._nvimgcodec_view(im, dev) for im in out]
                t3 = time.perf_counter()
                groups: dict = {}
                for im in imgs:
                    groups.setdefault(tuple(im.shape), []).append(im)
                xs = [torch.stack(g) for g in groups.values()]  # one batch per image size
                torch.cuda.synchronize(dev)
                t4 = time.perf_counter()
                ys = [F.resize_crop_tensor(x, pre) for x in xs]
                torch.cuda.synchronize(dev)
                t5 = time.perf_counter()
                del out, imgs, groups, xs, ys  # nvimgcodec frees the decoded images here
                torch.cuda.synchronize(dev)
                t6 = time.perf_counter()
                if k == 0:
                    continue  # warm-up
                for key, a, b in (("decode", t0, t1), ("wait", t1, t2), ("view", t2, t3), ("stack", t3, t4),
                                  ("resize", t4, t5), ("free", t5, t6)):
                    t[key] += b - a
            n = sum(len(b) for b in batches[1:]) + len(batches[0])
            per = {k: round(v / n * 1e6, 2) for k, v in t.items()}
            total = sum(t.values())
            print(json.dumps({"hw_load": load, "us_per_image": per, "img_per_s": round(n / total),
                              "max_abs_vs_torchvision": diff}), flush=True)
        except Exception as e:  # noqa: BLE001
            print(json.dumps({"hw_load": load, "failed": repr(e)[:300]}), flush=True)
            return 1  # the CUDA context may be gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
