"""visclust evaluate --assignments CSV [--labels folders|LABELS.csv] [--model MODEL] [--json]"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score assignments against labels (ACC, NMI, ARI) or without them",
                       description="With --labels: Hungarian accuracy (ACC), NMI, ARI and purity. Without: "
                       "silhouette, Davies-Bouldin and Calinski-Harabasz in the model's feature space (needs --model).")
    p.add_argument("--assignments", required=True, metavar="CSV", help="CSV written by fit or predict; - reads it from standard input")
    p.add_argument("--labels", metavar="folders|CSV",
                   help="'folders' (class = parent directory name) or a path,label CSV, paths relative to the "
                   "current directory or to the CSV's folder (images it does not name are left out of the scores, "
                   "and counted)")
    p.add_argument("--model", metavar="MODEL", help="model file, for the label-free scores")
    p.add_argument("--weights", action="append", metavar="FILE",
                   help="backbone weights for --model, if not found automatically (once per backbone)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..evaluate import external_scores, internal_scores
    from ..exceptions import InputError
    from ..io import read_assignments, resolve_labels
    from ._common import weights_arg

    a = read_assignments(args.assignments)
    if len(a) == 0:
        raise InputError(f"{args.assignments} has no rows to evaluate")
    if args.labels:
        labels = resolve_labels(args.labels, a.paths, allow_missing=True)
        have = np.flatnonzero([label is not None for label in labels])
        if len(have) < len(labels):  # score the images someone labelled, and say so
            first = a.paths[next(i for i, label in enumerate(labels) if label is None)]
            print(f"scored the {len(have)} of {len(labels)} images that have a label in {args.labels}; "
                  f"{len(labels) - len(have)} have none (first: {first})", file=sys.stderr)
        clusters = np.asarray(a.clusters)[have]
        scores = external_scores([labels[i] for i in have], clusters)
        scores["n_rejected"] = int((clusters < 0).sum())
        scores["n_unlabelled"] = int(len(labels) - len(have))
    elif args.model:
        from ..model import ImageClusterer

        model = ImageClusterer.load(args.model, weights=weights_arg(args))
        res = model.extract(a.paths)
        by_path = dict(zip(a.paths, a.clusters))
        Z = model.feature_clusterer_.transform(res.features)
        scores = internal_scores(Z, np.array([by_path[p] for p in res.paths]))
    else:
        raise InputError("nothing to score against: pass --labels folders|LABELS.csv, or --model MODEL for label-free scores")
    if args.json:
        print(json.dumps(scores, sort_keys=True))
    else:
        for k, v in scores.items():
            print(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")
    return 0
