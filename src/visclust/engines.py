"""Engines that run a backbone on batches of uint8 images: PyTorch or ONNX Runtime.

Every engine takes a batch as it comes out of decoding, ``(n, height, width, 3)`` uint8
(NHWC), and returns pooled features ``(n, feature_dim)`` float32. Normalisation (mean/std)
happens inside the engine, once per batch.

* :class:`TorchEngine` runs the PyTorch module. On CUDA it uses bf16 autocast,
  channels_last and, on request, ``torch.compile`` (the last, smaller batch is padded so the
  compiled graph is reused).
* :class:`OnnxEngine` runs the same network in ONNX Runtime, several times faster than
  PyTorch eager on CPU (measured in docs/benchmarks.md). The network, with the uint8 ->
  normalised-float step folded into the graph, is exported once per backbone config (name,
  weights hash, preprocessing: :meth:`BackboneConfig.cache_key`) into
  ``$VISCLUST_CACHE/onnx`` (default ``~/.cache/visclust/onnx``) and checked against
  PyTorch on a batch every time it is loaded.

:func:`create_engine` picks one: ``'auto'`` is ONNX Runtime on CPU when it is installed
and PyTorch on CUDA. When export, loading or the check fails, it warns
(:class:`EngineFallbackWarning`) and runs PyTorch instead: slower, never wrong.
"""

from __future__ import annotations

import copy
import os
import secrets
import warnings

import numpy as np

from .exceptions import InputError, MissingDependencyError

ENGINES = ("auto", "torch", "onnx")
#: Bump when the exported graph changes (its file name carries it: old exports are ignored).
EXPORT_VERSION = 1
ONNX_OPSET = 17
#: The ONNX features may differ from PyTorch's by at most this, relative to max |feature|.
VERIFY_RTOL = 1e-4


class EngineFallbackWarning(UserWarning):
    """The requested engine could not be used; features are computed with PyTorch."""


def cpu_count() -> int:
    """CPU cores this process may run on (respects affinity masks and containers' cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cache_dir() -> str:
    """Where exported ONNX graphs are kept: ``$VISCLUST_CACHE/onnx`` or ``~/.cache/visclust/onnx``."""
    root = os.environ.get("VISCLUST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "visclust")
    return os.path.join(root, "onnx")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def _normalizer(pre):
    """``(mean, 1/std)`` on the 0..255 scale, shaped (1, 3, 1, 1)."""
    import torch

    mean = torch.tensor([m * 255.0 for m in pre.mean], dtype=torch.float32).view(1, 3, 1, 1)
    inv_std = torch.tensor([1.0 / (s * 255.0) for s in pre.std], dtype=torch.float32).view(1, 3, 1, 1)
    return mean, inv_std


def _uint8_network(backbone):
    """The backbone as one module from uint8 NHWC images to flat features (what is exported)."""
    import torch.nn as nn

    mean, inv_std = _normalizer(backbone.preprocess)

    class Uint8Network(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("inv_std", inv_std)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2).float()
            y = self.net((x - self.mean) * self.inv_std)
            return y.flatten(1)

    return Uint8Network(backbone.module).eval()


class TorchEngine:
    """Run the backbone with PyTorch.

    Parameters
    ----------
    backbone : Backbone
    device : str, optional
        Default CUDA when available.
    amp : bool, optional
        bf16 autocast; default on for CUDA devices that support bf16.
    channels_last : bool, optional
        NHWC memory format; default on for CUDA.
    compile : bool, default False
        ``torch.compile`` the network (minutes of compilation, then faster).
    """

    name = "torch"

    def __init__(self, backbone, device=None, *, amp: bool | None = None, channels_last: bool | None = None,
                 compile: bool = False):
        import torch

        from .features import resolve_device

        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.amp = (cuda and torch.cuda.is_bf16_supported()) if amp is None else bool(amp)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.feature_dim = backbone.feature_dim
        module = backbone.module.eval()
        first = next(iter(module.parameters()), None)
        if self.channels_last or (first is not None and first.device != self.device):
            # A copy: nn.Module.to() works in place, and the backbone (or another engine
            # made from it, e.g. a CPU reference next to a CUDA engine) must keep its own.
            module = copy.deepcopy(module).to(self.device)
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.module = torch.compile(module) if compile else module
        self.compiled = bool(compile)
        self._batch = None  # compiled or CUDA: pad to the first batch size (one shape, no re-tuning)
        mean, inv_std = _normalizer(backbone.preprocess)
        self.mean, self.inv_std = mean.to(self.device), inv_std.to(self.device)

    def __call__(self, batch) -> np.ndarray:
        """Features of a ``(n, h, w, 3)`` uint8 batch (numpy or tensor) as float32 numpy."""
        return self.forward_nchw(self.to_nchw(batch))

    def to_nchw(self, batch):
        """A ``(n, h, w, 3)`` uint8 batch (numpy or tensor) on this engine's device, as an
        NCHW view (channels_last strides: no copy)."""
        import torch

        x = torch.as_tensor(batch)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise InputError(f"expected a (n, height, width, 3) uint8 batch, got {tuple(x.shape)} {x.dtype}")
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def forward_nchw(self, x) -> np.ndarray:
        """Features of ``(n, 3, h, w)`` pixels on this engine's device (uint8 or float, 0..255)."""
        return self.forward_nchw_async(x).result()

    def forward_nchw_async(self, x) -> "PendingFeatures":
        """Start :meth:`forward_nchw` and return at once (on CUDA; on CPU it has finished).

        On CUDA the features are copied into pinned host memory behind the network on the
        same stream: the caller can prepare the next batch while this one runs, and
        :meth:`PendingFeatures.result` waits only for this batch.
        """
        import torch

        n = len(x)
        with torch.inference_mode():
            x = (x.float() - self.mean) * self.inv_std
            if self.compiled or self.device.type == "cuda":
                # A short batch (the last one) padded to the first batch's size: a new shape
                # costs a recompilation (compiled) or cuDNN's autotuning (cudnn.benchmark),
                # seconds each, against one batch's compute. Measured on an H200: the first
                # extraction ran at 5,236 img/s against 7,117 for the next, unpadded.
                if self._batch is None:
                    self._batch = n
                if n < self._batch:
                    x = torch.cat([x, x.new_zeros((self._batch - n, *x.shape[1:]))])
            # after the padding: a cat of NHWC and NCHW parts is NCHW, and a compiled graph
            # recompiles (13 s for ResNet-50 on an H200) when the layout changes
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                y = self.module(x)
            y = y[:n].float().reshape(n, -1)
            if self.device.type != "cuda":
                return PendingFeatures(y)
            host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return PendingFeatures(host, done)

    def __repr__(self) -> str:
        return f"TorchEngine(device={self.device}, amp={self.amp}, channels_last={self.channels_last}, compiled={self.compiled})"


class PendingFeatures:
    """Features of one batch, possibly still being computed on a GPU."""

    def __init__(self, host, done=None):
        self._host, self._done = host, done

    def result(self) -> np.ndarray:
        """``(n, feature_dim)`` float32, once the device has written them."""
        if self._done is not None:
            self._done.synchronize()
        return self._host.numpy()


class OnnxEngine:
    """Run the backbone with ONNX Runtime on CPU (exported once, cached, checked on load).

    Parameters
    ----------
    backbone : Backbone
    cache : str, optional
        Directory of exported graphs (default :func:`cache_dir`).
    threads : int, optional
        Intra-op threads (default: the CPU cores this process may use).
    verify : bool, default True
        Compare with PyTorch on a batch of random images before use.

    Raises
    ------
    MissingDependencyError
        onnxruntime (or onnx) is not installed.
    RuntimeError
        Export, loading or the check against PyTorch failed (:func:`create_engine` then
        falls back to :class:`TorchEngine`).
    """

    name = "onnxruntime"

    def __init__(self, backbone, cache: str | None = None, threads: int | None = None, verify: bool = True):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError("the onnx engine needs onnxruntime: pip install onnxruntime onnx onnxscript "
                                         "(or use --engine torch)") from e
        self.feature_dim = backbone.feature_dim
        self.threads = threads or cpu_count()
        self.path = os.path.join(cache or cache_dir(), f"{backbone.config.cache_key()}-v{EXPORT_VERSION}.onnx")
        self.max_abs_diff = None
        exported = False
        if not os.path.isfile(self.path):
            export_onnx(backbone, self.path)
            exported = True
        try:
            self._open()
            if verify:
                self.max_abs_diff = self.verify(backbone)
        except Exception:
            if exported:
                raise
            # A stale or damaged cached export: export again once.
            export_onnx(backbone, self.path)
            self._open()
            if verify:
                self.max_abs_diff = self.verify(backbone)

    def _open(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # Spinning threads burn the cores that image decoding (and any other process)
        # needs; on the shared 2-core machine model-only was faster without spinning.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch) -> np.ndarray:
        """Features of a ``(n, h, w, 3)`` uint8 batch as float32 numpy."""
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise InputError(f"expected a (n, height, width, 3) uint8 batch, got {x.shape} {x.dtype}")
        y = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        return np.asarray(y, dtype=np.float32).reshape(len(x), -1)

    def verify(self, backbone, n: int = 4, seed: int = 0) -> float:
        """Max abs difference to PyTorch on ``n`` random images; raises RuntimeError if too big."""
        s = backbone.preprocess.input_size
        x = np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)
        ref = TorchEngine(backbone, "cpu", amp=False, channels_last=False)(x)
        got = self(x)
        if got.shape != ref.shape:
            raise RuntimeError(f"ONNX features have shape {got.shape}, PyTorch {ref.shape}")
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        tol = VERIFY_RTOL * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        if not diff <= tol:  # also catches NaN
            raise RuntimeError(f"ONNX features differ from PyTorch by {diff:.3g} (tolerance {tol:.3g})")
        return diff

    def __repr__(self) -> str:
        return f"OnnxEngine({self.path!r}, threads={self.threads})"


def export_onnx(backbone, path: str) -> str:
    """Export ``backbone`` (uint8 NHWC in, features out, dynamic batch) to ``path`` atomically."""
    import torch

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    s = backbone.preprocess.input_size
    net = _uint8_network(backbone).to("cpu")
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros((2, s, s, 3), dtype=torch.uint8),), tmp, dynamo=False,
                              input_names=["images"], output_names=["features"], opset_version=ONNX_OPSET,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def create_engine(backbone, engine: str = "auto", device=None, *, compile: bool = False, cache: str | None = None,
                  threads: int | None = None):
    """The engine to compute ``backbone``'s features with.

    Parameters
    ----------
    backbone : Backbone
    engine : {'auto', 'torch', 'onnx'}, default 'auto'
        ``'auto'``: ONNX Runtime on CPU when installed, PyTorch on CUDA.
    device : str, optional
        Default CUDA when available. The onnx engine runs on CPU only.
    compile : bool, default False
        ``torch.compile`` the network (PyTorch only: ``'auto'`` then means PyTorch on CPU
        too). Measured on an H200, ResNet-50 bf16: 21,244-22,278 img/s model only against
        14,770-14,977 eager, after about 20 s of compilation (docs/benchmarks.md, "GPU").
    cache : str, optional
        Directory of exported ONNX graphs (default :func:`cache_dir`).
    threads : int, optional
        ONNX Runtime intra-op threads (default: all usable cores).

    Returns
    -------
    TorchEngine or OnnxEngine
        A failed export or check falls back to TorchEngine with an EngineFallbackWarning.
    """
    from .features import resolve_device

    check_engine(engine)
    dev = resolve_device(device)
    if engine == "onnx" and dev.type != "cpu":
        raise InputError(f"the onnx engine runs on CPU only, not on {dev}; use --engine torch or --device cpu")
    if engine == "onnx" and compile:
        raise InputError("compiling (torch.compile) applies to the torch engine, not onnx; use --engine torch "
                         "or leave out --compile")
    use_onnx = engine == "onnx" or (engine == "auto" and dev.type == "cpu" and not compile and _has_onnxruntime())
    if use_onnx:
        try:
            return OnnxEngine(backbone, cache=cache, threads=threads)
        except MissingDependencyError:
            raise
        except Exception as e:  # the exporter and ORT raise many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warnings.warn(f"ONNX Runtime engine unavailable for {backbone.name} ({type(e).__name__}: {first}); "
                          "computing features with PyTorch instead", EngineFallbackWarning, stacklevel=2)
    return TorchEngine(backbone, dev, compile=compile)


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
