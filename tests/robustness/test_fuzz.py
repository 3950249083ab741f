"""Fuzz the two loaders that read files from elsewhere: nothing but the documented exception
(:class:`ModelFileError` for model files, :class:`ImageReadError` for images) may escape.

CI runs a small, derandomized budget. For a longer hunt (random seeds, many examples)::

    VISCLUST_FUZZ_EXAMPLES=20000 VISCLUST_SHARED=../shared \\
        .venv/bin/python -m pytest tests/robustness/test_fuzz.py -q -p no:cacheprovider

``VISCLUST_FUZZ_EXAMPLES`` is the number of examples per test (default 60); any value above
the default also turns derandomization off so each long run explores new inputs.
"""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs

from visclust.artifact import _checksum, load_model
from visclust.exceptions import ImageReadError, ModelFileError
from visclust.io import load_image
from visclust.model import FeatureClusterer

DEFAULT_EXAMPLES = 60
EXAMPLES = int(os.environ.get("VISCLUST_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= DEFAULT_EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    X, _ = make_blobs(90, centers=3, n_features=12, random_state=0)
    path = tmp_path_factory.mktemp("fuzz_model") / "m.vcm"
    FeatureClusterer(n_clusters=3, n_components=4, umap_components=None, method="kmeans").fit(X).save(path)
    return path.read_bytes()


def split(blob: bytes) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(safetensors header, manifest, arrays) of a model file."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    body = blob[8 + n:]
    types = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    arrays = {k: np.frombuffer(body[v["data_offsets"][0]:v["data_offsets"][1]], types[v["dtype"]]).reshape(v["shape"])
              for k, v in header.items() if k != "__metadata__"}
    return header, json.loads(header["__metadata__"]["visclust.manifest"]), arrays


def rebuild(manifest, arrays: dict[str, np.ndarray]) -> bytes:
    """A model file as an attacker would write it: any manifest and arrays, valid checksum."""
    from safetensors.numpy import save

    mjson = json.dumps(manifest)
    return save(arrays, metadata={"format": "visclust-model", "visclust.manifest": mjson,
                                  "visclust.checksum": _checksum(mjson, arrays)})


def check_model_blob(tmp_path, blob: bytes) -> None:
    path = tmp_path / "fuzzed.vcm"
    path.write_bytes(blob)
    try:
        model = load_model(path)
    except ModelFileError:
        return
    # A file that loads must give a usable model: predicting cannot crash either.
    X = np.random.default_rng(0).normal(size=(5, model.n_features_in_)).astype(np.float32)
    labels, conf = model.predict_with_confidence(X)
    assert labels.shape == (5,) and np.isfinite(conf).all()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=10)


@FUZZ
@given(data=st.data())
def test_model_loader_survives_damaged_bytes(tmp_path, model_bytes, data):
    blob = bytearray(model_bytes)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del blob[pos:pos + data.draw(st.integers(1, 16))]
    check_model_blob(tmp_path, bytes(blob))


def set_at(obj, keys: list, value):
    """Copy of ``obj`` with the value at the path ``keys`` (indices into dicts/lists) replaced."""
    if not keys or not isinstance(obj, (dict, list)) or not obj:
        return value
    obj = dict(obj) if isinstance(obj, dict) else list(obj)
    k = list(obj)[keys[0] % len(obj)] if isinstance(obj, dict) else keys[0] % len(obj)
    obj[k] = set_at(obj[k], keys[1:], value)
    return obj


@FUZZ
@given(data=st.data())
def test_model_loader_survives_rewritten_manifest_and_arrays(tmp_path, model_bytes, data):
    """The checksum is no defence against someone who rewrites it: every field is checked."""
    _, manifest, arrays = split(model_bytes)
    arrays = dict(arrays)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        what = data.draw(st.sampled_from(["manifest", "reshape", "dtype", "values", "drop"]))
        name = data.draw(st.sampled_from(sorted(arrays)))
        if what == "manifest":
            keys = data.draw(st.lists(st.integers(0, 50), min_size=1, max_size=4))
            manifest = set_at(manifest, keys, data.draw(JSON))
        elif what == "reshape":
            shape = data.draw(st.lists(st.integers(0, 6), max_size=3))
            arrays[name] = np.zeros(shape, arrays[name].dtype)
        elif what == "dtype":
            arrays[name] = arrays[name].astype(data.draw(st.sampled_from([np.float64, np.int64, np.int32, np.uint8])))
        elif what == "values":
            fill = data.draw(st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30]))
            with np.errstate(invalid="ignore"):  # NaN into an integer array: any value will do
                arrays[name] = np.full(arrays[name].shape, fill).astype(arrays[name].dtype)
        elif len(arrays) > 1:
            del arrays[name]
        # Half the time the manifest is made to agree with the new arrays, as an attacker would.
        if data.draw(st.booleans()) and isinstance(manifest, dict):
            manifest = {**manifest, "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                               for k, v in arrays.items()}}
    check_model_blob(tmp_path, rebuild(manifest, arrays))


@FUZZ
@given(header=JSON | st.dictionaries(st.text(max_size=8), JSON, max_size=5), tail=st.binary(max_size=64))
def test_model_loader_survives_any_json_header(tmp_path, header, tail):
    raw = json.dumps(header).encode()
    check_model_blob(tmp_path, struct.pack("<Q", len(raw)) + raw + tail)


# --------------------------------------------------------------------------- images


def _seed_images() -> dict[str, bytes]:
    from PIL import Image

    rgb = Image.new("RGB", (24, 16), (200, 30, 30))
    rgb.paste((20, 20, 220), (0, 0, 12, 8))
    out = {}
    for fmt, img, kw in [("PNG", rgb, {}), ("JPEG", rgb, {"quality": 90}), ("GIF", rgb.convert("P"), {}),
                         ("BMP", rgb, {}), ("TIFF", rgb, {}), ("WEBP", rgb, {}), ("PPM", rgb, {}),
                         ("ICO", rgb, {}), ("PNG", rgb.convert("RGBA"), {}), ("TIFF", rgb.convert("I;16"), {})]:
        buf = io.BytesIO()
        try:
            img.save(buf, fmt, **kw)
        except (KeyError, OSError, ValueError):
            continue  # this Pillow cannot write it
        out[f"{fmt}-{img.mode}"] = buf.getvalue()
    return out


SEEDS = _seed_images()


@FUZZ
@given(data=st.data())
def test_image_loader_survives_damaged_images(tmp_path, data):
    name = data.draw(st.sampled_from(sorted(SEEDS)), label="seed")
    blob = bytearray(SEEDS[name])
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        pos = data.draw(st.integers(0, len(blob) - 1)) if blob else 0
        kind = data.draw(st.sampled_from(["flip", "flip", "truncate", "insert"]))
        if kind == "flip" and blob:
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path / ("fuzzed." + name.split("-")[0].lower())
    path.write_bytes(bytes(blob))
    try:
        img = load_image(path, draft_size=data.draw(st.sampled_from([None, 32])))
    except ImageReadError:
        return
    assert img.mode == "RGB" and img.size[0] * img.size[1] > 0


@FUZZ
@given(blob=st.binary(max_size=256), ext=st.sampled_from([".jpg", ".png", ".gif", ".tif", ".webp", ".heic"]))
def test_image_loader_survives_arbitrary_bytes(tmp_path, blob, ext):
    path = tmp_path / ("arbitrary" + ext)
    path.write_bytes(blob)
    try:
        img = load_image(path)
    except ImageReadError:
        return
    assert img.mode == "RGB"
