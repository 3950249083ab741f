"""visclust predict MODEL INPUT... [--output CSV]"""

from __future__ import annotations

import sys

from ._common import (add_backbone_options, add_runtime_options, add_store_options, check_outputs, cluster_summary,
                      progress_flag, report_skipped, weights_arg, write_assignments_arg)


def register(sub) -> None:
    p = sub.add_parser("predict", help="assign new images with a saved model",
                       description="Assign every readable image to a cluster of a saved model.")
    p.add_argument("model", metavar="MODEL", help="model file written by `visclust fit`")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories (recursive), .txt lists of paths, or - for paths piped on standard input")
    p.add_argument("--output", "-o", default="-", metavar="CSV",
                   help="assignments CSV to write (path,cluster,confidence); - or left out: standard output, and "
                        "unreadable images are listed on stderr only")
    p.add_argument("--reject", type=float, default=None, metavar="T",
                   help="confidence below T assigns cluster -1 (default: the model's own threshold)")
    p.add_argument("--reject-novel", action="store_true",
                   help="assign cluster -1 to images unlike the training images: farther from the nearest one, or "
                        "from the space they span, than 99.5%% of the training images are (the confidence only "
                        "says which cluster an image resembles most, not whether it resembles any)")
    add_backbone_options(p, default=None)
    add_store_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import check_inputs_exist
    from ..model import ImageClusterer

    check_inputs_exist(args.inputs)  # before the network and its weights are loaded
    check_outputs(args.output)  # before the work, not after it
    model = ImageClusterer.load(args.model, weights=weights_arg(args))
    model.set_params(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                     progress=progress_flag(args), store=args.store, engine=args.engine)
    if args.reject is not None:
        model.feature_clusterer_.set_params(reject_threshold=args.reject)
        model.feature_clusterer_._validate_params()
    if args.reject_novel:
        model.feature_clusterer_.set_params(reject_novel=True)
        model.feature_clusterer_.check_novelty_kept()  # before the images are read
    a = model.assign(args.inputs)
    to_stdout = write_assignments_arg(args.output, a)
    if not args.quiet:
        print(f"assigned {cluster_summary(a)}; written to {'standard output' if to_stdout else args.output}",
              file=sys.stderr)
    return report_skipped(a, None if to_stdout else args.output, args.quiet)
