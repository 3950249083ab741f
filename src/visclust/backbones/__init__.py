"""Pretrained backbones by name, each with the preprocessing it was trained with.

Names look like ``torchvision/resnet50``, ``timm/vit_small_patch14_dinov2.lvd142m`` or
``open_clip/ViT-B-32:laion2b_s34b_b79k``. :func:`create_backbone` builds one;
:func:`list_backbones` lists the registered names. A backbone returns pooled,
pre-classifier features ``(n_samples, feature_dim)``; normalising them is the job of
:mod:`visclust.reduce`.
"""

from ._registry import (
    Backbone,
    BackboneConfig,
    BackboneInfo,
    Preprocess,
    create_backbone,
    get_backbone_info,
    list_backbones,
    register_backbone,
)
from . import _torchvision, _baseline, _timm, _open_clip  # noqa: F401  (registration)

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneInfo",
    "Preprocess",
    "create_backbone",
    "get_backbone_info",
    "list_backbones",
    "register_backbone",
]
