"""visclust demo: the whole job on scikit-learn's digits, offline, with metrics."""

from __future__ import annotations

import os
import sys
import tempfile


def register(sub) -> None:
    p = sub.add_parser("demo", help="run fit -> predict -> evaluate on scikit-learn's digits (offline)",
                       description="Writes scikit-learn's 1,797 digit images as PNG files, fits on 1,500, predicts "
                       "the other 297 and prints ACC/NMI/ARI. Uses MobileNetV2 when its weights are available "
                       "(--weights, $VISCLUST_WEIGHTS, or the torchvision cache), else raw pixels.")
    p.add_argument("--weights", metavar="FILE", default=os.environ.get("VISCLUST_WEIGHTS"),
                   help="MobileNetV2 weights (.safetensors or .pth); default $VISCLUST_WEIGHTS")
    p.add_argument("--workdir", metavar="DIR", help="keep the images, model and CSVs here (default: a temp dir)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def _cached_mobilenet() -> bool:
    import torch
    from torchvision.models import MobileNet_V2_Weights

    url = MobileNet_V2_Weights.DEFAULT.url
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def write_digits(root: str) -> tuple[list[str], list[str]]:
    """Save the digits as 8-bit PNGs in ``root/{train,test}/<digit>/``; return both path lists."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.images))
    train, test = [], []
    for rank, i in enumerate(order):
        split = "train" if rank < 1500 else "test"
        folder = os.path.join(root, split, str(d.target[i]))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8), "L").save(path)
        (train if split == "train" else test).append(path)
    return train, test


def run(args) -> int:
    from ..evaluate import external_scores
    from ..io import labels_from_folders, write_assignments
    from ..model import FeatureClusterer, ImageClusterer

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    if args.weights:
        backbone, weights, source = "torchvision/mobilenet_v2", args.weights, f"weights {args.weights}"
    elif _cached_mobilenet():
        backbone, weights, source = "torchvision/mobilenet_v2", None, "cached torchvision weights"
    else:
        backbone, weights, source = "baseline/pixels", None, None
        say("no pretrained weights found (--weights, $VISCLUST_WEIGHTS or the torchvision cache): "
            "falling back to the weight-free baseline feature extractor 'baseline/pixels'")
    if source:
        say(f"backbone {backbone} with {source}")
    with tempfile.TemporaryDirectory(prefix="visclust-demo-") as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        train, test = write_digits(os.path.join(work, "digits"))
        say(f"wrote {len(train)} training and {len(test)} test digit images under {work}/digits")
        model = ImageClusterer(backbone=backbone, weights=weights, n_clusters=10,
                               clusterer=FeatureClusterer(n_components=32), progress=False if args.quiet else None)
        model.fit(train)
        model_path = os.path.join(work, "digits.vcm")
        model.save(model_path)
        fitted = model.training_assignments()
        write_assignments(os.path.join(work, "train.csv"), fitted)
        predicted = model.assign(test)
        write_assignments(os.path.join(work, "test.csv"), predicted)
        for name, a in (("fit (1500 images)", fitted), ("predict (297 new images)", predicted)):
            s = external_scores(labels_from_folders(a.paths), a.clusters)
            print(f"{name:<26} ACC {s['acc']:.3f}  NMI {s['nmi']:.3f}  ARI {s['ari']:.3f}")
        if args.workdir:
            say(f"model {model_path}; assignments {work}/train.csv, {work}/test.csv")
    return 0
