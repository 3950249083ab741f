"""torchvision classification models as feature extractors (pooled, pre-classifier)."""

from __future__ import annotations

from ._registry import BackboneInfo, Preprocess, download_failed, load_into, register_backbone

# name -> (feature_dim, how to cut the classifier off)
_MODELS = {
    "vgg16": (4096, "vgg"),
    "resnet18": (512, "fc"),
    "resnet50": (2048, "fc"),
    "mobilenet_v2": (1280, "pool"),
    "mobilenet_v3_large": (960, "pool"),
    "efficientnet_b0": (1280, "pool"),
    "convnext_tiny": (768, "convnext"),
    "vit_b_16": (768, "vit"),
}
_DESCRIPTIONS = {
    "vgg16": "VGG16 fc7 (the original design's network)",
    "resnet50": "ResNet-50 global average pool (the original design's network)",
    "mobilenet_v2": "MobileNetV2 global average pool; small and fast on CPU",
}


def _preprocess(arch: str) -> Preprocess:
    from torchvision.models import get_model_weights

    t = get_model_weights(arch).DEFAULT.transforms()
    return Preprocess(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=str(t.interpolation.value),
    )


def _feature_module(model, how: str):
    import torch.nn as nn

    if how == "fc":
        model.fc = nn.Identity()
        return model
    if how == "vit":
        model.heads = nn.Identity()
        return model
    if how == "pool":
        return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if how == "vgg":
        return nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *list(model.classifier)[:-1])
    if how == "convnext":
        return nn.Sequential(model.features, model.avgpool, *list(model.classifier)[:-1])
    raise ValueError(how)


def _make_builder(arch: str, how: str):
    def build(weights_file, pretrained):
        import torch
        import torchvision.models as tvm

        if pretrained:
            try:
                model = tvm.get_model(arch, weights="DEFAULT")
            except Exception as e:  # network errors come as URLError, OSError, RuntimeError...
                raise download_failed(f"torchvision/{arch}", e, torch.hub.get_dir() + "/checkpoints") from e
        else:
            model = tvm.get_model(arch, weights=None)
            if weights_file is not None:
                load_into(model, weights_file, f"torchvision/{arch}")
        return _feature_module(model, how), _preprocess(arch)

    return build


for _arch, (_dim, _how) in _MODELS.items():
    register_backbone(
        BackboneInfo(
            name=f"torchvision/{_arch}",
            feature_dim=_dim,
            preprocess=_preprocess(_arch),
            description=_DESCRIPTIONS.get(_arch, ""),
            builder=_make_builder(_arch, _how),
        )
    )
