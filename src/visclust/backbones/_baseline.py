"""A weight-free baseline: the image's own pixels, downscaled. Needs no download."""

from __future__ import annotations

from ._registry import BackboneInfo, Preprocess, register_backbone

_SIZE = 32


def _build(weights_file, pretrained):
    import torch.nn as nn

    return nn.Flatten(1), Preprocess(input_size=_SIZE, resize_size=_SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


register_backbone(
    BackboneInfo(
        name="baseline/pixels",
        feature_dim=3 * _SIZE * _SIZE,
        preprocess=Preprocess(input_size=_SIZE, resize_size=_SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        description="raw RGB pixels at 32x32; no weights needed (the fallback when none are available)",
        builder=_build,
    )
)
