"""visclust backbones: the registered feature extractors."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("backbones", help="list the backbone names with feature and input sizes")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backbones import get_backbone_info, list_backbones
    from ..backbones._open_clip import EXAMPLES as CLIP
    from ..backbones._timm import EXAMPLES as TIMM
    from ..exceptions import VisclustError

    infos = list(list_backbones())
    for name in TIMM + CLIP:
        try:
            infos.append(get_backbone_info(name))
        except VisclustError:
            pass  # optional extra not installed
    if args.json:
        for i in infos:
            print(json.dumps({"name": i.name, "feature_dim": i.feature_dim, "input_size": i.preprocess.input_size,
                              "description": i.description}))
        return 0
    width = max(len(i.name) for i in infos)
    print(f"{'NAME':<{width}}  FEATURES  INPUT  DESCRIPTION")
    for i in infos:
        print(f"{i.name:<{width}}  {i.feature_dim:>8}  {i.preprocess.input_size:>5}  {i.description}")
    print("\nAny timm model works as timm/<name>; OpenCLIP as open_clip/<arch>:<pretrained tag> (extra 'clip').")
    return 0
