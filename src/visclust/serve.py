"""Assign images sent over HTTP with a model loaded once: ``visclust serve MODEL``.

Endpoints (JSON answers):

* ``POST /assign`` with one image file's bytes as the body (any format visclust reads):
  ``{"cluster": 3, "confidence": 0.97}``; cluster -1 when the model's reject threshold (or
  ``--reject-novel``) marks the image as fitting no cluster.
* ``GET /health``: ``{"status": "ok", "n_clusters": K, "backbones": [...]}``.

Uploads are untrusted: a body over ``max_bytes`` is refused before it is read (413), and the
bytes are decoded with the same checks as files (the pixel limit read from the header before
any pixel is decoded; :func:`visclust.io.load_image_bytes`); bytes that are not a usable image
get 400 with the reason. Requests are served by threads; the model runs one request at a
time (its engine uses every core already).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .exceptions import ImageReadError, InputError

#: Largest upload accepted, in bytes (a 100-megapixel JPEG is about 30 MB).
MAX_UPLOAD_BYTES = 64 << 20


class AssignServer(ThreadingHTTPServer):
    """An HTTP server answering with ``model``'s clusters (see the module's docstring)."""

    daemon_threads = True
    # connections waiting to be accepted: socketserver's 5 made 9 of 16 simultaneous uploads wait
    # ~1 s for the client's SYN to be resent (measured with 16 curl processes at once)
    request_queue_size = 128

    def __init__(self, address, model, max_bytes: int = MAX_UPLOAD_BYTES, log=None):
        super().__init__(address, _Handler)
        self.model = model
        self.max_bytes = int(max_bytes)
        self.log = log  # a function taking one line per request, or None
        self.lock = threading.Lock()
        # one decode serves every view: at the largest size any of them resizes from
        self.draft_size = max(c.preprocess.resize_size or c.preprocess.input_size for c in model.backbone_configs_)
        for bb in model.get_backbones():  # made now, not during the first request (ONNX Runtime: ~0.7 s)
            model._engine(bb)

    def assign(self, data: bytes) -> dict:
        from .io import load_image_bytes

        image = load_image_bytes(data, "upload", self.draft_size)
        with self.lock:
            a = self.model.assign_images([image])
        return {"cluster": int(a.clusters[0]), "confidence": round(float(a.confidence[0]), 6)}

    def health(self) -> dict:
        return {"status": "ok", "n_clusters": int(self.model.n_clusters_),
                "backbones": [f"{c.name}@{c.preprocess.input_size}px" for c in self.model.backbone_configs_]}


class _Handler(BaseHTTPRequestHandler):
    server: AssignServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stay silent (mid-upload or between requests) before its connection closes

    def _reply(self, status: int, body: dict, close: bool = False) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health":
            self._reply(200, self.server.health())
        else:
            self._reply(404, {"error": f"no such endpoint {self.path}; POST /assign or GET /health"})

    def do_POST(self) -> None:  # noqa: N802
        t0 = time.perf_counter()
        if self.path != "/assign":
            self._reply(404, {"error": f"no such endpoint {self.path}; POST an image to /assign"}, close=True)
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "send the image with a Content-Length header"}, close=True)
            return
        if length > self.server.max_bytes or length < 0:
            self._reply(413, {"error": f"upload of {length:,} bytes is over the {self.server.max_bytes:,}-byte limit"},
                        close=True)  # not read: the connection is closed instead
            return
        data = self.rfile.read(length)
        try:
            answer = self.server.assign(data)
        except (ImageReadError, InputError) as e:
            self._reply(400, {"error": str(e)})
            return
        if self.server.log is not None:  # before the answer: a client that has it finds the line written
            self.server.log(f"{self.client_address[0]} POST /assign {length:,} bytes -> cluster {answer['cluster']} "
                            f"({answer['confidence']:.3f}) in {1000 * (time.perf_counter() - t0):.1f} ms")
        self._reply(200, answer)

    def log_message(self, format, *args) -> None:  # noqa: A002 - http.server's signature
        pass  # one line per answered upload (the server's log), not http.server's own lines


def make_server(model, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_UPLOAD_BYTES,
                log=None) -> AssignServer:
    """An :class:`AssignServer` for a fitted or loaded :class:`~visclust.model.ImageClusterer`
    bound to ``host:port`` (port 0: any free port, ``server.server_address[1]`` says which);
    call ``serve_forever()`` on it."""
    if getattr(model, "feature_clusterer_", None) is None:
        raise InputError("serve needs a fitted model (visclust.load(path) or ImageClusterer(...).fit(...))")
    if not 0 <= int(port) <= 65535:
        raise InputError(f"port {port} is not one; give 1-65535, or 0 for any free port")
    if int(max_bytes) <= 0:
        raise InputError(f"the largest upload must be at least one byte, got {max_bytes}")
    try:
        return AssignServer((host, int(port)), model, max_bytes=max_bytes, log=log)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from e
