from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..exceptions import InputError, UnknownBackboneError, WeightsUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images become the network's input: resize the shorter side to ``resize_size``,
    centre-crop ``input_size`` x ``input_size``, scale to [0, 1], normalise with mean/std."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        try:
            return cls(
                input_size=int(d["input_size"]),
                resize_size=int(d["resize_size"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                interpolation=str(d["interpolation"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"bad preprocessing description {d!r}: {e}") from e


@dataclass(frozen=True)
class BackboneConfig:
    """What produced a set of features. The feature store's key and the model file's record."""

    name: str
    weights_sha256: str
    feature_dim: int
    preprocess: Preprocess

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
            "preprocess": self.preprocess.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        try:
            return cls(str(d["name"]), str(d["weights_sha256"]), int(d["feature_dim"]), Preprocess.from_dict(d["preprocess"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"bad backbone description {d!r}: {e}") from e

    def cache_key(self) -> str:
        """A short stable hash of everything that changes the features."""
        import json

        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class BackboneInfo:
    """A registry entry: what ``visclust backbones`` lists."""

    name: str
    feature_dim: int
    preprocess: Preprocess
    description: str = ""
    #: builder(weights_file or None, pretrained) -> (torch.nn.Module, Preprocess)
    builder: Optional[Callable] = field(default=None, repr=False, compare=False)


_REGISTRY: dict[str, BackboneInfo] = {}
#: Families resolved by prefix for names not registered one by one (``timm/<any model>``).
_FAMILIES: dict[str, Callable[[str], BackboneInfo]] = {}


def register_backbone(info: BackboneInfo) -> BackboneInfo:
    _REGISTRY[info.name] = info
    return info


def register_family(prefix: str, resolver: Callable[[str], BackboneInfo]) -> None:
    _FAMILIES[prefix] = resolver


#: Entry-point group of installed packages that add backbones: each entry names a function
#: (``pkg.module:register``) that calls :func:`register_backbone`, or a module that does so
#: when imported. Loaded the first time a name is not found, and by :func:`list_backbones`.
PLUGIN_GROUP = "visclust.backbones"
_plugins_loaded: list = []


def load_plugins() -> None:
    """Run every installed ``visclust.backbones`` entry point, once per process. A plugin
    that fails is a warning naming it; the other backbones stay usable."""
    if _plugins_loaded:
        return
    _plugins_loaded.append(True)
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # noqa: BLE001 - someone else's code: report it, go on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warnings.warn(f"backbone plugin '{ep.name}' ({ep.value}) failed to load: {type(e).__name__}: {first}",
                          stacklevel=2)


def list_backbones() -> list[BackboneInfo]:
    load_plugins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_backbone_info(name: str) -> BackboneInfo:
    if name not in _REGISTRY and not _plugins_loaded:
        load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix = name.split("/", 1)[0] + "/"
    if prefix in _FAMILIES and len(name) > len(prefix):
        return _FAMILIES[prefix](name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'; {hint}`visclust backbones` lists all "
        "(timm models as 'timm/<name>', open_clip as 'open_clip/<arch>:<tag>'; a network of your own: "
        f"visclust.backbones.register_backbone, from Python or a package's '{PLUGIN_GROUP}' entry point)"
    )


class Backbone:
    """A feature extractor ready to run: the module, its preprocessing and its identity.

    Use :func:`create_backbone` to build one.
    """

    def __init__(self, info: BackboneInfo, module, preprocess: Preprocess, weights_sha256: str,
                 weights_source: str):
        self.info = info
        self.module = module
        self.preprocess = preprocess
        self.weights_source = weights_source
        self.config = BackboneConfig(info.name, weights_sha256, info.feature_dim, preprocess)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def feature_dim(self) -> int:
        return self.info.feature_dim

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, feature_dim={self.feature_dim}, weights={self.weights_source})"


def create_backbone(name: str, weights: str | os.PathLike | None = None, pretrained: bool = True,
                    seed: int = 0) -> Backbone:
    """Build a backbone by registry name.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``'torchvision/resnet50'``.
    weights : path, optional
        A local ``.safetensors`` (or ``.pth``/``.pt``, loaded with ``weights_only=True``)
        state dict to load instead of downloading the pretrained weights.
    pretrained : bool, default True
        With ``False`` (and no ``weights``), the network keeps random weights drawn with
        ``seed``: useless features, but fine for testing plumbing.

    Raises
    ------
    UnknownBackboneError, WeightsUnavailableError, MissingDependencyError
    """
    import torch

    info = get_backbone_info(name)
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(f"weights file '{weights}' does not exist")
        source = weights
    elif pretrained:
        source = "pretrained"
    else:
        source = f"random(seed={seed})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, preprocess = info.builder(weights, pretrained and weights is None)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Backbone(info, module, preprocess, state_dict_sha256(module), source)


def state_dict_sha256(module) -> str:
    """Hash of every parameter and buffer, in key order: the weights' identity."""
    import torch

    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_state_dict_file(path: str) -> dict:
    """Read a weights file without executing code from it."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
    except Exception as e:  # safetensors / torch raise many kinds on bad files
        raise WeightsUnavailableError(
            f"cannot read weights file '{path}' ({type(e).__name__}: {e}); give a .safetensors "
            "or a plain-tensor .pth state dict"
        ) from e
    if not isinstance(sd, dict):
        raise WeightsUnavailableError(f"weights file '{path}' holds no state dict")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def load_into(module, path: str, name: str, strict: bool = True) -> None:
    sd = load_state_dict_file(path)
    try:
        result = module.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsUnavailableError(
            f"weights file '{path}' does not fit backbone '{name}': {first}"
        ) from e
    if not strict and result.missing_keys:
        raise WeightsUnavailableError(
            f"weights file '{path}' lacks {len(result.missing_keys)} tensors of backbone '{name}' "
            f"(first: {result.missing_keys[0]})"
        )


@contextlib.contextmanager
def hub_logs_quiet():
    """Hugging Face Hub's own warnings off while weights are fetched: offline, it logged
    "'[Errno -2] Name or service not known' thrown while requesting HEAD ..." on stderr
    before visclust's one-line error (:func:`download_failed`) said the same."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def download_failed(name: str, err: Exception, cache_dir: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot obtain pretrained weights for '{name}' ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
        f"pass a local file with --weights FILE (.safetensors or .pth), or place the downloaded file in {cache_dir}"
    )
