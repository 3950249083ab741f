"""The model file: round trip, and every way a file from elsewhere can be wrong gives one
clear ModelFileError (and exit status 2 from the CLI) without running anything from it."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from visclust.artifact import FORMAT_VERSION, _checksum, load_model, read_model_file
from visclust.cli import main
from visclust.exceptions import ModelFileError
from visclust.model import FeatureClusterer, ImageClusterer


def small_clusterer():
    return FeatureClusterer(n_clusters=3, n_components=4, umap_components=None, method="kmeans")


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(90, centers=3, n_features=12, random_state=0)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def good_file(blobs, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "good.vcm"
    small_clusterer().fit(blobs).save(path)
    return path


def split(blob: bytes):
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    manifest = json.loads(header["__metadata__"]["visclust.manifest"])
    _, arrays = None, {}
    body = blob[8 + n:]
    types = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    for k, v in header.items():
        if k != "__metadata__":
            s, e = v["data_offsets"]
            arrays[k] = np.frombuffer(body[s:e], types[v["dtype"]]).reshape(v["shape"]).copy()
    return manifest, arrays


def rewrite(manifest, arrays, fix_checksum=True, old_checksum="") -> bytes:
    """Write a model file with any manifest/arrays, recomputing the checksum as an attacker would."""
    from safetensors.numpy import save

    mjson = json.dumps(manifest)
    return save(arrays, metadata={"format": "visclust-model", "visclust.manifest": mjson,
                                  "visclust.checksum": _checksum(mjson, arrays) if fix_checksum else old_checksum})


def test_round_trip_predicts_the_same_and_is_readable_by_others(blobs, good_file, tmp_path):
    fc = small_clusterer().fit(blobs)
    fc.save(tmp_path / "m.vcm")
    loaded = load_model(tmp_path / "m.vcm")
    assert isinstance(loaded, FeatureClusterer)
    np.testing.assert_array_equal(loaded.predict(blobs), fc.predict(blobs))
    np.testing.assert_allclose(loaded.predict_with_confidence(blobs)[1], fc.confidence_, atol=1e-6)
    # A model file is meant to be shared: not the private 0600 of a temporary file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(tmp_path / "m.vcm").st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["m.vcm"]  # no temporary file left behind


def test_a_header_length_that_starts_like_a_pickle_still_loads(good_file, tmp_path):
    """The file starts with its header length, little-endian: its first byte may be 0x80,
    which is also how a pickle starts. Such a model must load."""
    manifest, arrays = split(good_file.read_bytes())
    for n in range(512):
        blob = rewrite({**manifest, "note": "x" * n}, arrays)
        if blob[0] == 0x80:
            break
    (tmp_path / "m.vcm").write_bytes(blob)
    assert blob[0] == 0x80 and isinstance(load_model(tmp_path / "m.vcm"), FeatureClusterer)


class Evil:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_files(good: bytes, tmp_path) -> dict[str, tuple[bytes, str]]:
    manifest, arrays = split(good)
    (n,) = struct.unpack("<Q", good[:8])
    future = {**manifest, "format_version": FORMAT_VERSION + 1, "visclust_version": "99.0"}
    edited = {**manifest, "feature_clusterer": {**manifest["feature_clusterer"],
                                                 "params": {**manifest["feature_clusterer"]["params"],
                                                            "reject_threshold": 0.9}}}
    wrong_shape = {**manifest, "arrays": {**manifest["arrays"], "cluster_centers": {"shape": [3, 5], "dtype": "float32"}}}
    disagree = dict(arrays, cluster_centers=np.zeros((3, 7), np.float32))
    disagree_manifest = {**manifest, "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                for k, v in disagree.items()}}
    nan = dict(arrays, **{"classifier.coef": np.full_like(arrays["classifier.coef"], np.nan)})
    zero_scale = dict(arrays, **{"reducer.scale": np.zeros_like(arrays["reducer.scale"])})  # found by the fuzz test
    negative_t = dict(arrays, **{"classifier.temperature": -arrays["classifier.temperature"]})
    bad_param = {**manifest, "feature_clusterer": {**manifest["feature_clusterer"],
                                                    "params": {**manifest["feature_clusterer"]["params"],
                                                               "reject_threshold": 7}}}
    Evil.marker = str(tmp_path / "code-ran")
    return {
        "pickle payload": (pickle.dumps(Evil()), "pickle"),
        "pickle payload, protocol 0": (pickle.dumps(Evil(), protocol=0), "not a visclust model file"),
        "empty": (b"", "only 0 bytes"),
        "truncated in the length": (good[:5], "truncated"),
        "truncated in the header": (good[:8 + n // 2], "truncated"),
        "truncated in the arrays": (good[:-7], "truncated"),
        "edited manifest": (rewrite(edited, arrays, fix_checksum=False,
                                    old_checksum=json.loads(good[8:8 + n])["__metadata__"]["visclust.checksum"]),
                            "checksum mismatch"),
        "shapes disagree with the manifest": (rewrite(wrong_shape, arrays), "manifest says"),
        "arrays disagree with each other": (rewrite(disagree_manifest, disagree), "disagree with each other"),
        "NaN weights": (rewrite(manifest, nan), "NaN"),
        "zero whitening scale": (rewrite(manifest, zero_scale), "scale values must be positive"),
        "negative temperature": (rewrite(manifest, negative_t), "temperature must be positive"),
        "invalid parameter": (rewrite(bad_param, arrays), "reject_threshold"),
        "future version": (rewrite(future, arrays), "upgrade visclust"),
        "an image, not a model": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a visclust model file"),
    }


CASES = ["pickle payload", "pickle payload, protocol 0", "empty", "truncated in the length", "truncated in the header",
         "truncated in the arrays", "edited manifest", "shapes disagree with the manifest",
         "arrays disagree with each other", "NaN weights", "zero whitening scale", "negative temperature", "invalid parameter", "future version",
         "an image, not a model"]


@pytest.mark.parametrize("case", CASES)
def test_bad_model_file_gives_one_clear_error_and_exit_status_2(case, good_file, tmp_path, capsys):
    blob, message = bad_files(good_file.read_bytes(), tmp_path)[case]
    bad = tmp_path / "bad.vcm"
    bad.write_bytes(blob)
    with pytest.raises(ModelFileError, match=message) as e:
        load_model(bad)
    assert str(bad) in str(e.value)

    (tmp_path / "imgs").mkdir()
    out = tmp_path / "out.csv"
    assert main(["predict", str(bad), str(tmp_path / "imgs"), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visclust predict: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not (tmp_path / "code-ran").exists()


def test_torch_save_file_is_refused_without_unpickling(tmp_path):
    import torch

    Evil.marker = str(tmp_path / "code-ran")
    torch.save({"model": Evil()}, tmp_path / "model.vcm")
    with pytest.raises(ModelFileError, match="pickle or torch.save"):
        load_model(tmp_path / "model.vcm")
    assert not (tmp_path / "code-ran").exists()


@pytest.mark.parametrize("what", ["directory", "missing"])
def test_not_a_file_is_a_model_file_error(tmp_path, what):
    path = tmp_path / "m.vcm"
    if what == "directory":
        path.mkdir()
    with pytest.raises(ModelFileError, match="directory" if what == "directory" else "does not exist"):
        read_model_file(path)


def test_runtime_settings_never_come_from_the_file(tmp_path):
    """A shared file must not choose where visclust writes or how many processes it starts."""
    from conftest import make_shape_images

    images = make_shape_images(tmp_path / "imgs", n_per_class=4, size=32)
    model = ImageClusterer(backbone="baseline/pixels", n_clusters=3, num_workers=0, progress=False,
                           clusterer=FeatureClusterer(n_components=None, umap_components=None, method="kmeans"))
    model.fit([images])
    model.save(tmp_path / "m.vcm")
    manifest, arrays = split((tmp_path / "m.vcm").read_bytes())
    manifest["params"].update(num_workers=10_000, batch_size=10**9, device="cuda:7", store=str(tmp_path / "elsewhere"),
                              engine="onnx", progress=True)
    assert "verbose" not in manifest["feature_clusterer"]["params"]  # not written ...
    manifest["feature_clusterer"]["params"]["verbose"] = True  # ... nor read
    (tmp_path / "edited.vcm").write_bytes(rewrite(manifest, arrays))
    loaded = load_model(tmp_path / "edited.vcm")
    assert isinstance(loaded, ImageClusterer) and loaded.backbone == "baseline/pixels" and loaded.n_clusters == 3
    defaults = ImageClusterer().get_params()
    for key in ("num_workers", "batch_size", "device", "store", "engine", "progress"):
        if key in defaults:
            assert loaded.get_params()[key] == defaults[key], key
    assert loaded.feature_clusterer_.verbose is False
    loaded.set_params(num_workers=0)
    again = loaded.assign([images])
    np.testing.assert_array_equal(again.clusters, model.labels_)
    assert not (tmp_path / "elsewhere").exists()


def test_a_neighbour_vote_model_round_trips_and_a_bad_reference_is_refused(tmp_path):
    from sklearn.datasets import make_moons

    X, _ = make_moons(400, noise=0.05, random_state=0)
    X = np.hstack([X, np.random.default_rng(0).normal(0, 0.01, (400, 2))]).astype(np.float32)
    fc = FeatureClusterer(n_clusters=2, n_components=4, whiten=False, umap_components=None, method="agglomerative",
                          classifier="knn").fit(X)
    assert fc.classifier_.kind_ == "knn"
    fc.save(tmp_path / "m.vcm")
    loaded = load_model(tmp_path / "m.vcm")
    np.testing.assert_array_equal(loaded.predict(X), fc.predict(X))
    manifest, arrays = split((tmp_path / "m.vcm").read_bytes())
    arrays["classifier.reference_labels"] = arrays["classifier.reference_labels"] + 5
    (tmp_path / "bad.vcm").write_bytes(rewrite(manifest, arrays))
    with pytest.raises(ModelFileError, match="disagree"):
        load_model(tmp_path / "bad.vcm")


def test_a_network_model_round_trips_and_a_bad_hidden_layer_is_refused(tmp_path):
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(300, centers=3, n_features=6, random_state=0)
    X = X.astype(np.float32)
    fc = FeatureClusterer(n_clusters=3, method="kmeans", space="pca", n_init=2).fit(X)
    rng = np.random.default_rng(0)
    fc.refit_classifier(X, [X + rng.normal(0, 0.2, X.shape).astype(np.float32)])
    assert fc.classifier_.kind_ == "mlp"
    fc.save(tmp_path / "m.vcm")
    loaded = load_model(tmp_path / "m.vcm")
    assert loaded.classifier_.kind_ == "mlp"
    np.testing.assert_array_equal(loaded.predict(X), fc.predict(X))
    np.testing.assert_allclose(loaded.predict_proba(X), fc.predict_proba(X), rtol=1e-6)
    manifest, arrays = split((tmp_path / "m.vcm").read_bytes())
    arrays["classifier.hidden_intercept"] = arrays["classifier.hidden_intercept"][:-1]
    manifest["arrays"]["classifier.hidden_intercept"]["shape"] = [len(arrays["classifier.hidden_intercept"])]
    (tmp_path / "bad.vcm").write_bytes(rewrite(manifest, arrays))
    with pytest.raises(ModelFileError, match="disagree"):
        load_model(tmp_path / "bad.vcm")
