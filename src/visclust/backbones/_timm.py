"""Any timm model as ``timm/<model name>`` (DINOv2: ``timm/vit_small_patch14_dinov2.lvd142m``).

Needs the ``timm`` extra. The preprocessing comes from the model's own pretrained config
(timm's ``resolve_data_config``), as timm itself does.
"""

from __future__ import annotations

import functools
import math

from ..exceptions import MissingDependencyError, UnknownBackboneError
from ._registry import BackboneInfo, Preprocess, download_failed, hub_logs_quiet, load_into, register_family

EXAMPLES = ("timm/vit_small_patch14_dinov2.lvd142m", "timm/vit_base_patch14_dinov2.lvd142m")


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise MissingDependencyError("timm backbones need timm: pip install 'visclust[timm]'") from e
    return timm


def _preprocess(timm, model) -> Preprocess:
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return Preprocess(
        input_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


@functools.lru_cache(maxsize=64)
def resolve(name: str) -> BackboneInfo:
    import torch

    timm = _import_timm()
    model_name = name.split("/", 1)[1]
    arch = model_name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UnknownBackboneError(
            f"unknown timm model '{model_name}'; `python -c \"import timm; print(timm.list_models('*dino*'))\"` lists names"
        )
    with torch.device("meta"):
        meta = timm.create_model(model_name, pretrained=False, num_classes=0)
    pre = _preprocess(timm, meta)

    def build(weights_file, pretrained):
        if pretrained:
            try:
                with hub_logs_quiet():
                    model = timm.create_model(model_name, pretrained=True, num_classes=0)
            except Exception as e:
                raise download_failed(name, e, "the Hugging Face cache (~/.cache/huggingface/hub)") from e
        else:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            if weights_file is not None:
                load_into(model, weights_file, name, strict=False)
        return model, pre

    return BackboneInfo(name=name, feature_dim=int(meta.num_features), preprocess=pre,
                        description="timm model (pooled pre-logits features)", builder=build)


register_family("timm/", resolve)
