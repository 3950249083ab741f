"""`visclust serve`: a model answering uploads over HTTP, as a real server on a real socket."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib

import pytest
from PIL import Image

from conftest import make_shape_images
from visclust import ImageClusterer
from visclust.io import collect_inputs
from visclust.serve import make_server


def _call(url: str, data: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png_claiming(width: int, height: int) -> bytes:
    """A real 1 x 1 PNG whose header is patched to claim ``width x height`` (valid CRC)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A model of two backbones (random MobileNetV2 at its chosen size, and the pixels), served
    on a free port in a thread; the base URL, the model, the files it was fitted on and the
    server's log (one server for the module's tests)."""
    shape_images = make_shape_images(tmp_path_factory.mktemp("served") / "shapes")
    model = ImageClusterer(backbone="torchvision/mobilenet_v2", pretrained=False, n_clusters=3, engine="torch",
                           num_workers=0, pixels=True, progress=False).fit([shape_images])
    lines = []
    server = make_server(model, port=0, max_bytes=200_000, log=lines.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", model, collect_inputs([shape_images]), lines
    finally:
        server.shutdown()
        server.server_close()


def test_uploads_get_the_clusters_and_confidences_of_their_files(served):
    url, model, paths, lines = served
    files = model.assign(paths)
    del lines[:]  # this test's lines only
    for i in (0, 13, 30):
        with open(paths[i], "rb") as f:
            status, answer = _call(f"{url}/assign", f.read())
        assert status == 200 and answer["cluster"] == files.clusters[i]
        assert answer["confidence"] == pytest.approx(files.confidence[i], abs=1e-6)
    assert len(lines) == 3 and "POST /assign" in lines[0] and "-> cluster" in lines[0]
    status, health = _call(f"{url}/health")
    assert status == 200 and health == {"status": "ok", "n_clusters": 3,
                                        "backbones": [f"torchvision/mobilenet_v2@{model.backbone_config_.preprocess.input_size}px",
                                                      "baseline/pixels@32px"]}


def test_bad_uploads_get_a_reason_and_the_server_goes_on(served):
    url, model, paths, _ = served
    assert _call(f"{url}/assign", b"not an image") == (400, {"error": "upload: not an image Pillow can decode"})
    status, answer = _call(f"{url}/assign", png_claiming(50_000, 50_000))  # refused from its header
    assert status == 400 and "over the 100,000,000-pixel limit" in answer["error"]
    conn = http.client.HTTPConnection(url.split("//")[1], timeout=60)  # over max_bytes: refused from the header
    conn.putrequest("POST", "/assign")
    conn.putheader("Content-Length", "300000")
    conn.endheaders()  # and no body sent: the answer comes without the server reading one
    r = conn.getresponse()
    assert r.status == 413 and "over the 200,000-byte limit" in json.loads(r.read())["error"]
    conn.close()
    assert _call(f"{url}/nothing")[0] == 404 and _call(f"{url}/elsewhere", b"x")[0] == 404
    with open(paths[0], "rb") as f:
        assert _call(f"{url}/assign", f.read())[0] == 200


def test_cli_serves_until_ctrl_c(tmp_path, shape_images, cli):
    model = tmp_path / "m.vcm"
    assert cli("fit", shape_images, "-k", "3", "--backbone", "baseline/pixels", "-o", model, "-q").returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "visclust.cli", "serve", str(model), "--port", "0"],
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        first = p.stderr.readline()
        assert first.startswith(f"visclust serve: {model} (3 clusters) on http://127.0.0.1:"), first
        port = int(first.split("127.0.0.1:")[1].split(":")[0])
        image = next(iter(sorted((shape_images / "red_disc").glob("*.png"))))
        status, answer = _call(f"http://127.0.0.1:{port}/assign", image.read_bytes())
        predicted = cli("predict", model, image, "-q").stdout.splitlines()[1].split(",")
        assert status == 200 and [answer["cluster"], answer["confidence"]] == [int(predicted[1]), float(predicted[2])]
        assert "POST /assign" in p.stderr.readline()
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=20) == 130
        assert "interrupted" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


def test_serving_needs_a_fitted_model_and_a_free_port(served):
    from visclust.exceptions import InputError

    url, model, _, _ = served
    with pytest.raises(InputError, match="needs a fitted model"):
        make_server(ImageClusterer(), port=0)
    with pytest.raises(InputError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*choose another --port"):
        make_server(model, port=int(url.rsplit(":", 1)[1]))
    with pytest.raises(InputError, match="port 70000 is not one; give 1-65535"):
        make_server(model, port=70000)  # socket's own OverflowError was a traceback
    with pytest.raises(InputError, match="at least one byte"):
        make_server(model, port=0, max_bytes=0)
