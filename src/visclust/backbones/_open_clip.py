"""OpenCLIP image towers as ``open_clip/<arch>:<pretrained tag>`` (the ``clip`` extra)."""

from __future__ import annotations

import functools

from ..exceptions import MissingDependencyError, UnknownBackboneError
from ._registry import BackboneInfo, Preprocess, download_failed, hub_logs_quiet, register_family

EXAMPLES = ("open_clip/ViT-B-32:laion2b_s34b_b79k",)


def _import():
    try:
        import open_clip
    except ImportError as e:
        raise MissingDependencyError("open_clip backbones need open_clip: pip install 'visclust[clip]'") from e
    return open_clip


class _ImageTower:
    """Wraps a CLIP model so that calling it returns image embeddings."""

    def __new__(cls, clip_model):
        import torch.nn as nn

        class ImageTower(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.clip = m

            def forward(self, x):
                return self.clip.encode_image(x)

        return ImageTower(clip_model)


@functools.lru_cache(maxsize=16)
def resolve(name: str) -> BackboneInfo:
    open_clip = _import()
    spec = name.split("/", 1)[1]
    arch, _, tag = spec.partition(":")
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UnknownBackboneError(f"unknown open_clip architecture '{arch}'; open_clip.list_models() lists them")
    size = cfg["vision_cfg"].get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    pre = Preprocess(input_size=size, resize_size=size, mean=tuple(OPENAI_DATASET_MEAN),
                     std=tuple(OPENAI_DATASET_STD), interpolation="bicubic")

    def build(weights_file, pretrained):
        try:
            with hub_logs_quiet():
                model = open_clip.create_model(arch, pretrained=weights_file or (tag if pretrained else None))
        except Exception as e:
            raise download_failed(name, e, "the Hugging Face cache (~/.cache/huggingface/hub)") from e
        return _ImageTower(model), pre

    return BackboneInfo(name=name, feature_dim=int(cfg["embed_dim"]), preprocess=pre,
                        description="OpenCLIP image embedding", builder=build)


register_family("open_clip/", resolve)
