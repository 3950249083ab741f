"""The fitted model as one safe file.

Format: a `safetensors <https://github.com/huggingface/safetensors>`_ file. Its arrays are
the reducer, the classifier and the cluster centres; its header metadata holds
``visclust.manifest``, a JSON description (backbone name, weights hash, preprocessing,
parameters, library version, the expected shape of every array) and
``visclust.checksum``, a SHA-256 over the manifest and all array bytes.

Nothing is unpickled: loading parses a length-prefixed JSON header and raw little-endian
arrays, so a file from someone else can never run code. Every way a file can be wrong
(truncated, edited, not a model, from a newer version, shapes that disagree with the
manifest) raises :class:`~visclust.exceptions.ModelFileError` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from datetime import datetime, timezone

import numpy as np

from .exceptions import ModelFileError
from .io import atomic_output

FORMAT = "visclust-model"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 4 * 1024 ** 3
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def _version() -> str:
    from . import __version__

    return __version__


def _checksum(manifest_json: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(manifest_json.encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def _collect(model) -> tuple[dict, dict[str, np.ndarray]]:
    from .model import FeatureClusterer, ImageClusterer, _check_fitted

    if isinstance(model, ImageClusterer):
        _check_fitted(model, "feature_clusterer_")
        fc = model.feature_clusterer_
        params = {k: v for k, v in model.get_params(deep=False).items() if k not in ("clusterer", "weights")}
        extra = {
            "backbone": model.backbone_config_.to_dict(),
            "weights_hint": model.weights,
            "training": {"n_images": len(model.paths_), "n_skipped": len(model.skipped_)},
        }
    elif isinstance(model, FeatureClusterer):
        _check_fitted(model, "classifier_")
        fc, params, extra = model, {}, {}
    else:
        raise TypeError(f"cannot save a {type(model).__name__}")
    fc_params = fc.get_params()
    fc_params["k_range"] = list(fc_params["k_range"])
    arrays = {f"reducer.{k}": v for k, v in fc.reducer_.to_arrays().items()}
    arrays.update({f"classifier.{k}": v for k, v in fc.classifier_.to_arrays().items()})
    arrays["cluster_centers"] = fc.cluster_centers_
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype not in (np.float32, np.float64, np.int64):
            arrays[k] = v.astype(np.float32)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "visclust_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": type(model).__name__,
        "params": params,
        "feature_clusterer": {
            "params": fc_params,
            "n_features_in": int(fc.n_features_in_),
            "n_clusters": int(fc.n_clusters_),
            "reducer": fc.reducer_.get_params(),
            "classifier": fc.classifier_.get_params(),
            "k_scores": {str(k): v for k, v in fc.k_scores_.items()},
            "cluster_sizes": np.bincount(fc.labels_[fc.labels_ >= 0], minlength=fc.n_clusters_).tolist(),
        },
        **extra,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())},
    }
    return manifest, arrays


def save_model(model, path: str | os.PathLike) -> None:
    """Write ``model`` (fitted ImageClusterer or FeatureClusterer) to ``path`` atomically."""
    from safetensors.numpy import save

    manifest, arrays = _collect(model)
    mjson = json.dumps(manifest, sort_keys=True, default=_json_default)
    blob = save(arrays, metadata={"format": FORMAT, "visclust.manifest": mjson,
                                  "visclust.checksum": _checksum(mjson, arrays)})
    with atomic_output(path, "wb") as f:
        f.write(blob)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and verify a model file; returns ``(manifest, arrays)`` or raises ModelFileError."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ModelFileError(f"{path}: {size} bytes is too large for a visclust model file")
        with open(path, "rb") as f:
            data = f.read()
    except ModelFileError:
        raise
    except IsADirectoryError as e:
        raise ModelFileError(f"{path}: is a directory, not a model file") from e
    except FileNotFoundError as e:
        raise ModelFileError(f"model file '{path}' does not exist") from e
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read model file ({e.strerror or e})") from e

    what = f"{path}: not a visclust model file"
    if len(data) < 8:
        raise ModelFileError(f"{what} (only {len(data)} bytes; truncated?)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(data):
        raise ModelFileError(f"{what} (bad header length; truncated, or another format such as pickle)")
    try:
        header = json.loads(data[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{what} (header is not JSON)") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{what} (no visclust manifest)")
    try:
        manifest = json.loads(meta["visclust.manifest"])
        checksum = meta["visclust.checksum"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the model manifest is missing or not JSON (edited file?)") from e
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: the model manifest is not a JSON object")
    fv = manifest.get("format_version")
    if not isinstance(fv, int):
        raise ModelFileError(f"{path}: the manifest has no valid format_version (edited file?)")
    if fv > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by visclust {manifest.get('visclust_version', '?')} (format {fv}); this is visclust "
            f"{_version()} (format {FORMAT_VERSION}): upgrade visclust to load it"
        )

    # Arrays: decode each tensor from its offsets ourselves, checking every bound.
    arrays: dict[str, np.ndarray] = {}
    body = memoryview(data)[8 + hlen:]
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            start, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: array '{name}' has a malformed description") from e
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(s < 0 for s in shape) or not 0 <= start <= end <= len(body) or end - start != n * np.dtype(dtype).itemsize:
            raise ModelFileError(f"{path}: array '{name}' lies outside the file or has the wrong size (truncated?)")
        arrays[name] = np.frombuffer(body[start:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()

    expected = manifest.get("arrays")
    if not isinstance(expected, dict) or set(expected) != set(arrays):
        raise ModelFileError(f"{path}: the arrays in the file do not match the manifest (edited file?)")
    for name, spec in expected.items():
        if not isinstance(spec, dict) or list(arrays[name].shape) != spec.get("shape"):
            raise ModelFileError(
                f"{path}: array '{name}' has shape {list(arrays[name].shape)}, the manifest says "
                f"{spec.get('shape') if isinstance(spec, dict) else spec} (edited file?)"
            )
    if _checksum(meta["visclust.manifest"], arrays) != checksum:
        raise ModelFileError(f"{path}: checksum mismatch; the file was edited or damaged after it was written")
    return manifest, arrays


def load_model(path: str | os.PathLike, weights: str | None = None):
    """Load a model written by :func:`save_model`.

    Parameters
    ----------
    path : path
    weights : path, optional
        The backbone weights file to use (must have the same hash as at fit time); default
        the file named at fit time if it still exists, else the pretrained download.
    """
    from .backbones import BackboneConfig
    from .classify import PseudoLabelClassifier
    from .model import FeatureClusterer, ImageClusterer
    from .reduce import Reducer

    manifest, arrays = read_model_file(path)
    try:
        fcm = manifest["feature_clusterer"]
        params = dict(fcm["params"])
        params["k_range"] = tuple(params["k_range"])
        fc = FeatureClusterer(**params)
        fc.reducer_ = Reducer.from_arrays(fcm["reducer"], {k[8:]: v for k, v in arrays.items() if k.startswith("reducer.")})
        fc.classifier_ = PseudoLabelClassifier.from_arrays(
            fcm["classifier"], {k[11:]: v for k, v in arrays.items() if k.startswith("classifier.")})
        fc.cluster_centers_ = arrays["cluster_centers"]
        fc.n_clusters_ = int(fcm["n_clusters"])
        fc.n_features_in_ = int(fcm["n_features_in"])
        fc.k_scores_ = {int(k): float(v) for k, v in fcm.get("k_scores", {}).items()}
        _check_consistent(fc)
        if manifest["kind"] == "FeatureClusterer":
            return fc
        if manifest["kind"] != "ImageClusterer":
            raise ModelFileError(f"{path}: unknown model kind {manifest['kind']!r}")
        bcfg = BackboneConfig.from_dict(manifest["backbone"])
        hint = manifest.get("weights_hint")
        if weights is None and isinstance(hint, str) and os.path.isfile(hint):
            weights = hint
        model = ImageClusterer(**manifest["params"], weights=weights)
        model.backbone = bcfg.name
        model.feature_clusterer_ = fc
        model.backbone_config_ = bcfg
        model.n_clusters_ = fc.n_clusters_
        model.paths_, model.skipped_ = [], []
        model.labels_, model.confidence_ = np.zeros(0, np.int64), np.zeros(0)
        return model
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFileError(f"{path}: the model manifest is incomplete or inconsistent ({type(e).__name__}: {e})") from e


def _check_consistent(fc) -> None:
    r, c = fc.reducer_, fc.classifier_
    d, k = r.components_.shape[1], r.components_.shape[0]
    if (r.mean_.shape != (d,) or r.scale_.shape != (k,) or c.coef_.shape[1] != k or c.intercept_.shape != (c.coef_.shape[0],)
            or c.classes_.shape != (c.coef_.shape[0],) or fc.n_features_in_ != d
            or fc.cluster_centers_.shape != (fc.n_clusters_, k)):
        raise ModelFileError("the model's arrays disagree with each other (edited file?)")
