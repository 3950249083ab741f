"""visclust serve MODEL [--host H] [--port P]: assign images sent over HTTP."""

from __future__ import annotations

import sys

from ._common import add_backbone_options, weights_arg


def register(sub) -> None:
    p = sub.add_parser("serve", help="assign images sent over HTTP with a saved model",
                       description="Load the model once and answer POST /assign (the body: one image file's bytes) "
                       "with {\"cluster\": N, \"confidence\": C}, and GET /health. Uploads are decoded with the same "
                       "checks as files; Ctrl-C stops the server.")
    p.add_argument("model", metavar="MODEL", help="model file written by `visclust fit`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free port)")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="largest upload accepted (default 64 MiB); larger ones get 413 unread")
    p.add_argument("--reject", type=float, default=None, metavar="T",
                   help="confidence below T assigns cluster -1 (default: the model's own threshold)")
    p.add_argument("--reject-novel", action="store_true",
                   help="assign cluster -1 to images unlike the training images (as `visclust predict --reject-novel`)")
    add_backbone_options(p, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--quiet", "-q", action="store_true", help="no line per request")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..model import ImageClusterer
    from ..serve import MAX_UPLOAD_BYTES, make_server

    model = ImageClusterer.load(args.model, weights=weights_arg(args))
    model.set_params(device=args.device, progress=False, num_workers=0)
    if args.reject is not None:
        model.feature_clusterer_.set_params(reject_threshold=args.reject)
        model.feature_clusterer_._validate_params()
    if args.reject_novel:
        model.feature_clusterer_.set_params(reject_novel=True)
        model.feature_clusterer_.check_novelty_kept()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    server = make_server(model, args.host, args.port, MAX_UPLOAD_BYTES if args.max_bytes is None else args.max_bytes,
                         log=None if args.quiet else log)
    host, port = server.server_address[:2]
    log(f"visclust serve: {args.model} ({model.n_clusters_} clusters) on http://{host}:{port}: "
        "POST an image to /assign; Ctrl-C stops")
    with server:
        server.serve_forever()
    return 0
