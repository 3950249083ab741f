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
import math
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
        cfgs = getattr(model, "backbone_configs_", None) or [model.backbone_config_]
        extra = {
            # one backbone: "backbone"; features concatenated from several: "backbones", in order
            **({"backbone": cfgs[0].to_dict()} if len(cfgs) == 1 else {"backbones": [c.to_dict() for c in cfgs]}),
            "weights_hint": model.weights_hint(),
            "training": {"n_images": len(model.paths_), "n_skipped": len(model.skipped_)},
        }
    elif isinstance(model, FeatureClusterer):
        _check_fitted(model, "classifier_")
        fc, params, extra = model, {}, {}
    else:
        raise TypeError(f"cannot save a {type(model).__name__}")
    fc_params = fc.get_params()
    fc_params.pop("verbose", None)  # a runtime setting, like ImageClusterer's progress: not the file's to choose
    fc_params["k_range"] = list(fc_params["k_range"])
    arrays = {f"reducer.{k}": v for k, v in fc.reducer_.to_arrays().items()}
    arrays.update({f"classifier.{k}": v for k, v in fc.classifier_.to_arrays().items()})
    arrays["cluster_centers"] = fc.cluster_centers_
    if getattr(fc, "novelty_thresholds_", None) is not None:
        arrays["novelty.reference"] = fc.novelty_reference_
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
            "classifier_fit": {"agreement": dict(getattr(fc.classifier_, "agreement_", {}) or {}),
                               "copies_kept": getattr(fc.classifier_, "copies_kept_", None)},
            "k_scores": {str(k): v for k, v in fc.k_scores_.items()},
            "pipeline": getattr(fc, "pipeline_", None),
            "pipeline_scores": getattr(fc, "pipeline_scores_", {}),
            "pipeline_centrality": getattr(fc, "pipeline_centrality_", {}),
            "whiten_scores": {str(k): v for k, v in getattr(fc, "whiten_scores_", {}).items()},
            "sample_rows": list(fc.sample_rows_) if getattr(fc, "sample_rows_", None) else None,
            # None: too few training rows, nothing is novel (JSON has no infinity)
            "novelty_thresholds": [t if np.isfinite(t) else None for t in getattr(fc, "novelty_thresholds_", ())],
            "cluster_sizes": _cluster_sizes(fc),
        },
        **extra,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())},
    }
    return manifest, arrays


def _cluster_sizes(fc) -> list | None:
    """Training images per cluster: from ``labels_``, or, for a model loaded from a file (no
    training labels), the sizes that file recorded, so a loaded model can be saved again."""
    labels = getattr(fc, "labels_", None)
    if labels is None:
        return getattr(fc, "cluster_sizes_", None)
    return np.bincount(labels[labels >= 0], minlength=fc.n_clusters_).tolist()


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
    """Parse and verify a model file without running anything from it.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    manifest : dict
        The JSON manifest (what produced the model, its parameters, the arrays' shapes).
    arrays : dict {str: ndarray}
        Every array, copied out of the file, each checked against the manifest.

    Raises
    ------
    ModelFileError
        For a file that is missing, not a visclust model (a pickle, a zip...), truncated,
        edited (checksum, shapes or dtypes disagreeing with the manifest) or written by a
        newer format version. No other exception escapes for a bad file.
    """
    path = os.fspath(path)
    try:
        if not os.path.isfile(path) and os.path.exists(path):
            kind = "a directory" if os.path.isdir(path) else "not a regular file"
            raise ModelFileError(f"{path}: is {kind}, not a model file; give the .vcm file `visclust fit` wrote")
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ModelFileError(f"{path}: {size} bytes is too large for a visclust model file")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except ModelFileError:
        raise
    except FileNotFoundError as e:
        raise ModelFileError(f"model file '{path}' does not exist") from e
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read model file ({e.strerror or e})") from e

    what = f"{path}: not a visclust model file"
    if len(data) < 8:
        raise ModelFileError(f"{what} (only {len(data)} bytes; truncated?)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(data):
        # Only now guess what it is: a model's own header length may start with byte 0x80.
        if data[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            raise ModelFileError(f"{what} (it looks like a pickle or torch.save file, which visclust never loads: "
                                 "loading those can run code; use a model written by `visclust fit`)")
        raise ModelFileError(f"{what} (bad header length; truncated, or another format)")
    header = _parse_json(data[8:8 + hlen], f"{what} (header is not JSON)")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{what} (no visclust manifest)")
    mjson, checksum = meta.get("visclust.manifest"), meta.get("visclust.checksum")
    if not isinstance(mjson, str) or not isinstance(checksum, str):
        raise ModelFileError(f"{path}: the model manifest or checksum is missing (edited file?)")
    manifest = _parse_json(mjson.encode("utf-8", "surrogatepass"), f"{path}: the model manifest is not JSON (edited file?)")
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: the model manifest is not a JSON object (edited file?)")
    fv = manifest.get("format_version")
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
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
        dtype, shape, start, end = _array_spec(path, name, spec)
        n = math.prod(shape)
        if not 0 <= start <= end <= len(body) or end - start != n * dtype.itemsize:
            raise ModelFileError(f"{path}: array '{name}' lies outside the file or has the wrong size (truncated?)")
        arrays[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))

    expected = manifest.get("arrays")
    if not isinstance(expected, dict) or set(expected) != set(arrays):
        raise ModelFileError(f"{path}: the arrays in the file do not match the manifest (edited file?)")
    for name, spec in expected.items():
        if not isinstance(spec, dict) or spec.get("shape") != list(arrays[name].shape):
            raise ModelFileError(
                f"{path}: array '{name}' has shape {list(arrays[name].shape)}, the manifest says "
                f"{spec.get('shape') if isinstance(spec, dict) else spec!r} (edited file?)"
            )
        if spec.get("dtype") != str(arrays[name].dtype):
            raise ModelFileError(f"{path}: array '{name}' is {arrays[name].dtype}, the manifest says "
                                 f"{spec.get('dtype')!r} (edited file?)")
    if _checksum(mjson, arrays) != checksum:
        raise ModelFileError(f"{path}: checksum mismatch; the file was edited or damaged after it was written")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ModelFileError(f"{path}: array '{name}' holds NaN or infinite values; the model is damaged")
    return manifest, arrays


def _parse_json(raw: bytes, message: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ModelFileError(message) from e


def _array_spec(path: str, name, spec) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, start, end)`` of one safetensors header entry, every field checked."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    ok = (isinstance(name, str) and isinstance(spec, dict) and isinstance(spec.get("dtype"), str)
          and spec["dtype"] in _DTYPES
          and isinstance(spec.get("shape"), list) and len(spec["shape"]) <= 8
          and all(is_int(d) and 0 <= d < 2 ** 40 for d in spec["shape"])
          and isinstance(spec.get("data_offsets"), list) and len(spec["data_offsets"]) == 2
          and all(is_int(o) for o in spec["data_offsets"]))
    if not ok:
        raise ModelFileError(f"{path}: array {name!r} has a malformed description (edited or damaged file)")
    start, end = spec["data_offsets"]
    return np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<"), tuple(spec["shape"]), start, end


#: Dimensions of the arrays every model has (others may be added by later versions).
_ARRAY_NDIM = {"reducer.mean": 1, "reducer.components": 2, "reducer.scale": 1, "reducer.explained_variance_ratio": 1,
               "classifier.coef": 2, "classifier.intercept": 1, "classifier.classes": 1,
               "classifier.temperature": 1, "cluster_centers": 2}
#: The ImageClusterer parameters a model file may set. Runtime settings (device, workers,
#: batch size, feature store, engine) are the user's: a shared file must not choose where
#: visclust writes or how many processes it starts.
_MODEL_PARAMS = ("backbone", "pretrained", "n_clusters")


def load_model(path: str | os.PathLike, weights: str | list | None = None):
    """Load a model written by :func:`save_model`.

    Parameters
    ----------
    path : path
    weights : path or list, optional
        The backbone weights file to use (must have the same hash as at fit time); default
        the file named at fit time if it still exists, else the pretrained download. For a
        model that concatenates several backbones, a list with one entry per backbone in
        order (None or ``'-'``: that backbone's default).

    Returns
    -------
    ImageClusterer or FeatureClusterer
        Fitted, as it was saved; runtime settings (device, batch size, workers, store,
        engine) are the defaults, never taken from the file.

    Raises
    ------
    ModelFileError
        For any file :func:`read_model_file` refuses, and for a manifest whose parameters
        are invalid or whose arrays disagree with each other.
    """
    from .backbones import BackboneConfig
    from .classify import PseudoLabelClassifier
    from .model import FeatureClusterer, ImageClusterer
    from .reduce import Reducer

    manifest, arrays = read_model_file(path)
    for name, ndim in _ARRAY_NDIM.items():
        if name not in arrays or arrays[name].ndim != ndim or arrays[name].size == 0:
            raise ModelFileError(f"{path}: array '{name}' is missing, empty or has the wrong number of dimensions "
                                 "(edited file?)")
    try:
        kind = manifest["kind"]
        if kind not in ("FeatureClusterer", "ImageClusterer"):
            raise ModelFileError(f"{path}: unknown model kind {kind!r}; expected an ImageClusterer or FeatureClusterer")
        fcm = manifest["feature_clusterer"]
        params = dict(fcm["params"])
        params.pop("verbose", None)  # runtime settings in a file are ignored
        params["k_range"] = tuple(params["k_range"])
        fc = FeatureClusterer(**params)
        fc._validate_params()
        fc.reducer_ = Reducer.from_arrays(fcm["reducer"], {k[8:]: v for k, v in arrays.items() if k.startswith("reducer.")})
        fc.classifier_ = PseudoLabelClassifier.from_arrays(
            fcm["classifier"], {k[11:]: v for k, v in arrays.items() if k.startswith("classifier.")})
        record = fcm.get("classifier_fit")  # absent in files written before 2026-12-05 (night)
        if isinstance(record, dict):  # a record for people (fit's line, report), not used to predict
            agree = record.get("agreement")
            fc.classifier_.agreement_ = {str(k): float(v) for k, v in agree.items()} if isinstance(agree, dict) else {}
            kept = record.get("copies_kept")
            fc.classifier_.copies_kept_ = float(kept) if isinstance(kept, (int, float)) else None
        sample = fcm.get("sample_rows")  # absent before 2026-12-06: every row was clustered
        fc.sample_rows_ = tuple(int(x) for x in sample) if isinstance(sample, list) and len(sample) == 3 else None
        fc.cluster_centers_ = arrays["cluster_centers"]
        if "novelty.reference" in arrays:  # absent before 2026-12-06: novelty() then asks for a refit
            near, residual = fcm["novelty_thresholds"]
            fc.novelty_reference_ = arrays["novelty.reference"]
            fc.novelty_thresholds_ = tuple(float("inf") if t is None else float(t) for t in (near, residual))
        fc.n_clusters_ = int(fcm["n_clusters"])
        sizes = fcm.get("cluster_sizes")
        fc.cluster_sizes_ = [int(x) for x in sizes] if isinstance(sizes, list) else None
        fc.n_features_in_ = int(fcm["n_features_in"])
        fc.k_scores_ = {int(k): float(v) for k, v in fcm.get("k_scores", {}).items()}
        # What the label-free selection chose: a record for people (report), not used to predict.
        fc.pipeline_ = str(fcm["pipeline"]) if isinstance(fcm.get("pipeline"), str) else None
        scores = fcm.get("pipeline_scores")
        fc.pipeline_scores_ = {str(k): float(v) for k, v in scores.items()} if isinstance(scores, dict) else {}
        central = fcm.get("pipeline_centrality")
        fc.pipeline_centrality_ = {str(k): float(v) for k, v in central.items()} if isinstance(central, dict) else {}
        _check_consistent(fc, os.fspath(path))
        if kind == "FeatureClusterer":
            return fc
        several = "backbones" in manifest
        if several and not (isinstance(manifest["backbones"], list) and len(manifest["backbones"]) >= 2):
            raise ModelFileError(f"{path}: 'backbones' must list at least two backbones (edited file?)")
        cfgs = [BackboneConfig.from_dict(d) for d in (manifest["backbones"] if several else [manifest["backbone"]])]
        dim = sum(c.feature_dim for c in cfgs)
        if dim != fc.n_features_in_:
            raise ModelFileError(f"{path}: the backbone(s) give {dim} features but the model expects "
                                 f"{fc.n_features_in_} (edited file?)")
        hint = manifest.get("weights_hint")
        if weights is None:  # the files the model was fitted with, where they all still exist
            hints = hint if isinstance(hint, list) else [hint]
            if any(isinstance(h, str) for h in hints) and all(
                    h is None or h == "-" or (isinstance(h, str) and os.path.isfile(h)) for h in hints):
                weights = hint
        saved = manifest["params"]
        model = ImageClusterer(**{k: saved[k] for k in _MODEL_PARAMS if k in saved}, weights=weights)
        model.backbone = [c.name for c in cfgs] if several else cfgs[0].name
        model.feature_clusterer_ = fc
        model.backbone_configs_ = cfgs
        model.backbone_config_ = cfgs[0]
        model.n_clusters_ = fc.n_clusters_
        model.paths_, model.skipped_ = [], []
        model.labels_, model.confidence_ = np.zeros(0, np.int64), np.zeros(0)
        return model
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError, RecursionError) as e:
        # ValueError includes visclust's InputError (an invalid parameter in the manifest).
        raise ModelFileError(f"{path}: the model manifest is incomplete or inconsistent "
                             f"({type(e).__name__}: {e}); the file was edited or damaged") from e


def _check_consistent(fc, path: str) -> None:
    r, c = fc.reducer_, fc.classifier_
    d, k = r.components_.shape[1], r.components_.shape[0]
    inner = k  # what the output layer reads: the reduced features, or the network's hidden units
    if c.kind_ == "mlp":
        inner = c.coef_.shape[1]
        if c.hidden_coef_.shape != (inner, k) or c.hidden_intercept_.shape != (inner,):
            raise ModelFileError(f"{path}: the model's arrays disagree with each other (edited file?)")
    if (r.mean_.shape != (d,) or r.scale_.shape != (k,) or c.coef_.shape[1] != inner or c.intercept_.shape != (c.coef_.shape[0],)
            or c.classes_.shape != (c.coef_.shape[0],) or fc.n_features_in_ != d
            or fc.cluster_centers_.shape != (fc.n_clusters_, k)
            or (getattr(fc, "novelty_thresholds_", None) is not None
                and (fc.novelty_reference_.ndim != 2 or fc.novelty_reference_.shape[1] != k
                     or not all(t >= 0 for t in fc.novelty_thresholds_)))
            or c.reference_.ndim != 2 or c.reference_.shape[1] != k or c.reference_labels_.shape != (len(c.reference_),)
            or (c.kind_ == "knn" and len(c.reference_) == 0)
            or (len(c.reference_labels_) and not (0 <= c.reference_labels_.min() and
                                                  c.reference_labels_.max() < len(c.classes_)))):
        raise ModelFileError(f"{path}: the model's arrays disagree with each other (edited file?)")
    # Divisors and multipliers that a fit always makes positive: zero would give NaN
    # confidences, a negative temperature inverted ones.
    if not (r.scale_ > 0).all():
        raise ModelFileError(f"{path}: the reducer's whitening scale values must be positive (edited file?)")
    if not c.temperature_ > 0:
        raise ModelFileError(f"{path}: the classifier's temperature must be positive, not {c.temperature_:g} (edited file?)")
