"""visclust fit INPUT... --clusters N --backbone NAME [--weights FILE] --output MODEL [--assignments CSV]"""

from __future__ import annotations

import sys

from ._common import (add_backbone_options, add_runtime_options, add_store_options, backbone_arg, check_outputs,
                      cluster_summary, describe_choices, input_size_arg, progress_flag, report_skipped, weights_arg,
                      write_assignments_arg)


def register(sub) -> None:
    p = sub.add_parser("fit", help="cluster images and save a model that assigns new ones",
                       description="Extract features, cluster them, train the classifier and save the model.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories (recursive), .txt lists of paths, or - for paths piped on standard input")
    p.add_argument("--clusters", "-k", default="8", metavar="N|auto",
                   help="number of clusters, or 'auto' to choose it (default %(default)s)")
    p.add_argument("--output", "-o", required=True, metavar="MODEL", help="model file to write (e.g. model.vcm)")
    p.add_argument("--assignments", metavar="CSV", help="write path,cluster,confidence for every input image (- for "
                   "standard output; unreadable images are then listed beside the model)")
    add_backbone_options(p)
    g = p.add_argument_group("clustering")
    g.add_argument("--method", default="auto",
                   help="auto (choose without labels, see docs/quality.md), kmeans, gmm, agglomerative, hdbscan "
                        "or spectral (default %(default)s)")
    g.add_argument("--space", default="auto", help="where clusters are found: auto, pca, umap or autoencoder "
                                                  "(default %(default)s)")
    g.add_argument("--learned-step", action="store_true",
                   help="also try an autoencoder on the features (N2D); kept only if the criterion prefers it")
    g.add_argument("--pca", type=int, default=64, metavar="D", help="PCA dimensions, 0 = none (default %(default)s)")
    g.add_argument("--umap", type=int, default=10, metavar="D",
                   help="dimensions of the UMAP embeddings, 0 = never use UMAP (default %(default)s)")
    g.add_argument("--umap-neighbors", type=int, default=15, metavar="N",
                   help="UMAP's nearest neighbours per image (default %(default)s)")
    g.add_argument("--k-range", default="2:30", metavar="MIN:MAX", help="candidates for --clusters auto (default %(default)s)")
    g.add_argument("--classifier", choices=("auto", "svm", "knn", "mlp"), default="auto",
                   help="what assigns images to clusters: a linear SVM, a vote of the nearest training images, a small "
                        "network (mlp), or auto: whichever of the SVM and the vote reproduces the clustering better on "
                        "held-out images, and the network with --augment (default %(default)s)")
    g.add_argument("--reject", type=float, default=0.0, metavar="T",
                   help="confidence below T assigns cluster -1 (default %(default)s: never)")
    g.add_argument("--pixels", choices=("auto", "on", "off"), default="auto",
                   help="also use the raw pixels (32x32), concatenated with the backbone's features: auto = fit "
                        "with and without them and keep the more reproducible clustering, if the backbone's own nearest "
                        "neighbours support its groups (label-free; doubles the "
                        "clustering time, only when --method or --space is auto and --clusters is a number) "
                        "(default %(default)s)")
    g.add_argument("--augment", type=int, default=0, metavar="N",
                   help="train the classifier (a small network) also on N augmented copies of each image (crop, "
                        "mirror, colour), those that still look like the collection; each copy costs one more feature "
                        "extraction: +0.015-0.024 ACC on CIFAR-10, within 0.005 on digits, symbols and garments; with "
                        "--classifier svm +0.03 on CIFAR-10 but lower elsewhere (default %(default)s: off)")
    g.add_argument("--classifier-views", choices=("chosen", "sizes", "all"), default="chosen",
                   help="what the classifier (and so predict) learns from, where the input sizes were compared on "
                        "every image: chosen: the kept view's features; sizes: also the backbone's at the other size "
                        "beside them (predict computes both; level on the views the default keeps, +0.02-0.03 ACC "
                        "where the weaker size was kept); all: also the raw pixels where they were compared and not "
                        "kept (default %(default)s)")
    g.add_argument("--max-cluster-rows", type=int, default=None, metavar="N",
                   help="on more images than N (or 100 per cluster, if more), choose the pipeline, the input size and "
                        "the pixels on a random sample of that many (only the chosen features are then computed for "
                        "every image), cluster up to 100,000 with it and let the trained classifier assign the rest; "
                        "0 = choose and cluster on every image (default 10,000: visclust.model.MAX_CLUSTER_ROWS)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    add_store_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run)


def parse_k_range(text: str) -> tuple[int, int]:
    from ..exceptions import InputError

    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise InputError(f"--k-range must look like 2:30, got '{text}'") from e
    return lo, hi


def run(args) -> int:
    from ..exceptions import InputError
    from ..io import check_inputs_exist
    from ..model import FeatureClusterer, ImageClusterer

    check_inputs_exist(args.inputs)  # before the network and its weights are loaded
    check_outputs(args.output, args.assignments)  # before the work, not after it
    for flag, value, least in (("--pca", args.pca, 0), ("--umap", args.umap, 0), ("--umap-neighbors", args.umap_neighbors, 2)):
        if value < least:  # named as the user typed it, not as the Python parameter
            raise InputError(f"{flag} must be at least {least}{' (0: none)' if least == 0 else ''}; got {value}")
    if args.max_cluster_rows is not None and args.max_cluster_rows < 0:
        raise InputError(f"--max-cluster-rows must be a number of images, or 0 to cluster every image; "
                         f"got {args.max_cluster_rows}")

    clusterer = FeatureClusterer(method=args.method, space=args.space, learned_step=args.learned_step,
                                 n_components=args.pca or None, umap_components=args.umap or None,
                                 umap_neighbors=args.umap_neighbors,
                                 classifier=args.classifier, reject_threshold=args.reject, k_range=parse_k_range(args.k_range),
                                 random_state=args.seed,
                                 **({} if args.max_cluster_rows is None else {"max_cluster_rows": args.max_cluster_rows or None}))
    model = ImageClusterer(backbone=backbone_arg(args), weights=weights_arg(args), pretrained=not args.random_weights,
                           n_clusters=args.clusters, clusterer=clusterer, batch_size=args.batch_size,
                           num_workers=args.workers, device=args.device, progress=progress_flag(args),
                           store=args.store, engine=args.engine,
                           pixels={"auto": "auto", "on": True, "off": False}[args.pixels],
                           input_size=input_size_arg(args), augment=args.augment,
                           classifier_views=args.classifier_views)
    model.fit(args.inputs)
    model.save(args.output)
    a = model.training_assignments()
    to_stdout = bool(args.assignments) and write_assignments_arg(args.assignments, a)
    if not args.quiet:
        print(f"fitted {cluster_summary(a, model.n_clusters_)}; model written to {args.output}", file=sys.stderr)
        if str(args.clusters).isdigit() and model.n_clusters_ < int(args.clusters):
            print(f"asked for {args.clusters} clusters, the clustering found {model.n_clusters_}: the features hold "
                  "no more distinct groups (identical images, e.g. duplicates, are never split)", file=sys.stderr)
        for line in describe_choices(model):  # what was chosen without labels, and the runners-up
            print(line, file=sys.stderr)
    return report_skipped(a, args.output if to_stdout else args.assignments or args.output, args.quiet)
