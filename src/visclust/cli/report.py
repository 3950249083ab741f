"""visclust report MODEL --assignments CSV --output report.html [--labels folders|LABELS.csv] [--weights FILE]"""

from __future__ import annotations

import os
import sys

from ._common import (add_backbone_options, add_runtime_options, add_store_options, check_outputs, progress_flag,
                      skipped_path, weights_arg)


def register(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML page that shows the clusters",
                       description="Per cluster: size, mean confidence, its most and least typical images; a 2-D "
                       "map of all images (hover shows the image and its path); scores (ACC/NMI/ARI and a confusion "
                       "matrix with --labels); the worst-fitting and the unreadable images. The page opens from disk "
                       "with no server and no network.")
    p.add_argument("model", metavar="MODEL", help="model file written by `visclust fit`")
    p.add_argument("--assignments", required=True, metavar="CSV", help="CSV written by fit or predict; - reads it from standard input")
    p.add_argument("--output", "-o", required=True, metavar="HTML", help="report file to write (e.g. report.html)")
    p.add_argument("--labels", metavar="folders|CSV",
                   help="'folders' (class = parent directory name) or a path,label CSV: adds ACC/NMI/ARI and a "
                   "confusion matrix (images a CSV does not name are shown, not scored)")
    g = p.add_argument_group("report")
    g.add_argument("--map", choices=("auto", "umap", "tsne", "pca"), default="auto",
                   help="2-D map method (default %(default)s: t-SNE up to 5,000 images, UMAP above)")
    g.add_argument("--map-points", type=int, default=20000, metavar="N",
                   help="the map shows a uniform sample above N images (default %(default)s)")
    g.add_argument("--typical", type=int, default=16, metavar="N", help="most typical images per cluster (default %(default)s)")
    g.add_argument("--atypical", type=int, default=8, metavar="N", help="least typical images per cluster (default %(default)s)")
    g.add_argument("--thumb-size", type=int, default=96, metavar="PX", help="thumbnail size in pixels (default %(default)s)")
    add_backbone_options(p, default=None)
    add_store_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run)


def _read_skipped(assignments_csv: str) -> list[tuple[str, str]]:
    """The ``*.skipped.csv`` that fit/predict wrote next to the assignments, if any."""
    from ..io import _read_csv

    path = skipped_path(assignments_csv)
    if assignments_csv == "-" or not os.path.isfile(path):  # from stdin: no file beside it
        return []
    return [(r["path"], r["reason"]) for r in _read_csv(path, required=("path", "reason"), what="skipped images")]


def run(args) -> int:
    from ..report import ReportOptions, report_model

    options = ReportOptions(typical=args.typical, atypical=args.atypical, thumb_size=args.thumb_size,
                            map_max_points=args.map_points, map_method=args.map,
                            verbose=not args.quiet and sys.stderr.isatty())  # as the features' progress bar
    options.validate()  # before the slow part
    check_outputs(args.output)

    from ..exceptions import InputError
    from ..io import read_assignments
    from ..model import ImageClusterer
    a = read_assignments(args.assignments)
    if len(a) == 0:
        raise InputError(f"{args.assignments} has no rows to report")
    a.skipped = _read_skipped(args.assignments)
    model = ImageClusterer.load(args.model, weights=weights_arg(args))
    model.set_params(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                     progress=progress_flag(args), store=args.store, engine=args.engine)
    stats = report_model(model, a, args.output, labels=args.labels, options=options,
                         model_info={"model": os.path.basename(args.model)})
    if stats.n_labelled is not None and stats.n_labelled < stats.n_images:  # say it even with --quiet, as evaluate does
        print(f"scored the {stats.n_labelled} of {stats.n_images} images that have a label in {args.labels}; "
              f"the others are shown without one", file=sys.stderr)
    if not args.quiet:
        s = stats.seconds
        print(f"report of {stats.n_images} images in {stats.n_clusters} clusters written to {stats.path}: "
              f"{stats.size_bytes / 1e6:.1f} MB, {stats.n_thumbnails} thumbnails, map of {stats.n_map_points} points "
              f"({stats.map_method}) with {stats.n_map_previews} previews; {s['total'] + s['features']:.1f} s "
              f"(features {s['features']:.1f} s, map {s['map']:.1f} s, thumbnails "
              f"{s['thumbnails'] + s['map_previews']:.1f} s, rest {s['total'] - s['map'] - s['thumbnails'] - s['map_previews']:.1f} s)",
              file=sys.stderr)
    return 0
