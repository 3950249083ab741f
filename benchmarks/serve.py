"""Assigning new images one request at a time, as a service does: latency per call.

Loads a model file once, then times ``model.assign`` on images already in memory (PIL images,
decoded before the clock starts, as an upload handler has them) and on their files, one image
per call and a batch per call. Medians over ``--repeats`` calls, after one warm-up call (the
first call builds the engine: ONNX Runtime's session from its cached export). Each row is also
timed with the engine made again at every call, as visclust did before it kept them.

Usage::

    python benchmarks/serve.py MODEL.vcm FOLDER [--weights W.safetensors] [--batch 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--weights")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clients", type=int, default=16, help="uploads sent at once to the server")
    args = ap.parse_args(argv)

    from PIL import Image

    import visclust
    from visclust.io import collect_inputs

    t0 = time.perf_counter()
    model = visclust.load(args.model, weights=args.weights)
    t_load = time.perf_counter() - t0
    model.set_params(progress=False, num_workers=0)
    paths = collect_inputs([args.folder])[: args.batch]
    images = [Image.open(p) for p in paths]
    for im in images:
        im.load()
    t0 = time.perf_counter()
    model.assign(images[:1])
    t_first = time.perf_counter() - t0
    views = ", ".join(f"{c.name}@{c.preprocess.input_size}px" for c in model.backbone_configs_)
    print(f"model {args.model} ({views}); {len(paths)} images of {args.folder}")
    print(f"load the model file: {1000 * t_load:.0f} ms; first call (engine built): {1000 * t_first:.0f} ms")
    print("| call | images | median ms per call (engine kept) | ms per image | engine made at every call | ratio |")
    print("|---|---|---|---|---|---|")

    def anew(items):  # as before 2026-12-06: the engine made (and checked) at every call
        model.__dict__.pop("_engines", None)
        model.assign(items)

    for what, items in (("in memory (PIL)", images), ("files", paths)):
        for n in (1, len(items)):
            ms = _median_ms(lambda: model.assign(list(items[:n])), args.repeats)
            ms0 = _median_ms(lambda: anew(list(items[:n])), args.repeats)
            print(f"| {what} | {n} | {ms:.1f} | {ms / n:.2f} | {ms0:.1f} | {ms0 / ms:.1f}x |")

    # `visclust serve`: one upload per request, from a client in this process, over localhost
    import threading
    import urllib.request

    from visclust.serve import make_server

    server = make_server(model, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/assign"
    with open(paths[0], "rb") as f:
        body = f.read()

    def post():
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as r:
            r.read()

    post()
    ms = _median_ms(post, args.repeats)
    print(f"| HTTP POST /assign (visclust serve), {len(body):,}-byte file | 1 | {ms:.1f} | {ms:.2f} | | |")
    server.shutdown()
    server.server_close()

    # many clients at once: one process each (threads of one process connect one after another),
    # released together by a barrier
    import multiprocessing as mp

    from visclust.serve import AssignServer

    ctx = mp.get_context("fork")
    for queue in (AssignServer.request_queue_size, 5):  # visclust's backlog, and socketserver's default
        AssignServer.request_queue_size = queue
        server = make_server(model, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/assign"
        barrier, results = ctx.Barrier(args.clients), ctx.Queue()
        procs = [ctx.Process(target=_client, args=(url, body, barrier, results)) for _ in range(args.clients)]
        for p in procs:
            p.start()
        ms = sorted(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join()
        print(f"{args.clients} clients at once (one process each), listen backlog {queue}: median "
              f"{statistics.median(ms):.0f} ms, slowest {ms[-1]:.0f} ms, {sum(m > 900 for m in ms)} over 900 ms")
        server.shutdown()
        server.server_close()


def _client(url: str, body: bytes, barrier, results) -> None:
    import urllib.request

    barrier.wait()
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as r:
        r.read()
    results.put(1000 * (time.perf_counter() - t0))

if __name__ == "__main__":
    main()
