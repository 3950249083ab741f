"""Options and output shared by several subcommands."""

from __future__ import annotations

import os
import sys

from ..io import Assignments, write_csv_atomic


DEFAULT_BACKBONE = "torchvision/mobilenet_v2"


def add_backbone_options(p, default: str | None = DEFAULT_BACKBONE) -> None:
    g = p.add_argument_group("backbone")
    if default is not None:
        g.add_argument("--backbone", action="append", metavar="NAME",
                       help=f"feature extractor (default {default}; `visclust backbones` lists them); give it "
                            "more than once to concatenate the features of several backbones")
    g.add_argument("--weights", action="append", metavar="FILE",
                   help="local weights (.safetensors or .pth) instead of downloading the pretrained ones; with "
                        "several backbones, once per backbone in the same order ('-' for a default download)")
    if default is not None:
        g.add_argument("--random-weights", action="store_true",
                       help="keep the network's random weights (testing plumbing only: the groups mean nothing)")
        g.add_argument("--input-size", default="auto", metavar="auto|backbone|N",
                       help="the network's input size: 'backbone' (its own preprocessing), N (images resized to "
                            "N x N, no crop), or 'auto': for small images (enlarged 4x or more, e.g. 32 x 32) "
                            "also try 4x their size and keep the size whose features recognise clearly more augmented "
                            "copies of the images, else the one whose clusterings the candidates of both agree with "
                            "most (with --clusters auto: else the backbone's own) (default %(default)s)")


def backbone_arg(args, default: str = DEFAULT_BACKBONE):
    """``--backbone`` as ImageClusterer takes it: a name, or a list of names."""
    names = args.backbone or [default]
    return names[0] if len(names) == 1 else names


def input_size_arg(args):
    """``--input-size`` as ImageClusterer takes it: 'auto', 'backbone' or an int."""
    from ..features import check_input_size

    v = args.input_size
    return check_input_size(int(v) if v.strip().isdigit() else v, what="--input-size")


def weights_arg(args):
    """``--weights`` as ImageClusterer / load take it: None, a file, or a list of files."""
    if not args.weights:
        return None
    return args.weights[0] if len(args.weights) == 1 else args.weights


def add_runtime_options(p) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default %(default)s)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image decoding processes; 0 = one low-priority thread in this process (default: 0 for a CPU model on up to 4 cores, else one per spare core)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def add_store_options(p, store_required: bool = False, extra_engines: tuple = (), extra_help: str = "") -> None:
    g = p.add_argument_group("features")
    g.add_argument("--store", required=store_required, metavar="DIR",
                   help="feature store directory (created if missing): features already there are reused, "
                   "new ones are added" + ("" if store_required else " (default: none, compute in memory)"))
    g.add_argument("--engine", choices=("auto", "torch", "onnx", *extra_engines), default="auto",
                   help="what runs the network: onnx (ONNX Runtime, fastest on CPU), torch, or auto = onnx on "
                   "CPU when installed, torch on CUDA" + extra_help + " (default %(default)s)")


def progress_flag(args) -> bool | None:
    return False if args.quiet else None


def report_skipped(assignments: Assignments, csv_path: str | None, quiet: bool) -> int:
    """Print the skipped images, write them next to ``csv_path`` (without one, every skipped
    image is printed, even when ``quiet``: nothing else keeps the list); return the exit status."""
    from . import EXIT_OK, EXIT_PARTIAL

    skipped = assignments.skipped
    if not skipped:
        return EXIT_OK
    if csv_path:
        out = skipped_path(csv_path)
        write_csv_atomic(out, ("path", "reason"), skipped)
        where, shown = f"; list in {out}", 10
    else:  # no file holds the list: all of it on stderr, even when quiet
        where, shown, quiet = "", len(skipped), False
    if not quiet:
        print(f"skipped {len(skipped)} unreadable image(s){where}:", file=sys.stderr)
        for path, reason in skipped[:shown]:
            print(f"  {reason}", file=sys.stderr)
        if len(skipped) > shown:
            print(f"  ... and {len(skipped) - shown} more", file=sys.stderr)
    return EXIT_PARTIAL


def check_outputs(*paths) -> None:
    """Each output file can be written (``-`` is standard output; None: not asked for), checked
    before hours of work rather than after (:func:`visclust.io.check_writable`)."""
    from ..io import check_writable

    for p in paths:
        if p is not None and p != "-":
            check_writable(p)


def write_assignments_arg(dest: str, assignments: Assignments) -> bool:
    """Write the assignments CSV to the file ``dest``, or to stdout when ``dest`` is ``-``
    (then True: no file beside it can hold the skipped list)."""
    from ..io import write_assignments, write_assignments_to

    if dest == "-":
        write_assignments_to(sys.stdout, assignments)
        return True
    write_assignments(dest, assignments)
    return False


def skipped_path(csv_path: str) -> str:
    root, _ = os.path.splitext(csv_path)
    return root + ".skipped.csv"


def cluster_summary(assignments: Assignments, n_clusters: int | None = None) -> str:
    """One line: images, clusters used (and, given the model's ``n_clusters``, how many of
    its clusters got no image: with many small clusters a classifier may leave some empty),
    rejected images, sizes, mean confidence."""
    import numpy as np

    c = assignments.clusters
    sizes = np.bincount(c[c >= 0]) if (c >= 0).any() else np.zeros(0, int)
    used = int((sizes > 0).sum())
    n = len(assignments)
    if n == 0:  # every input skipped (listed after this line)
        return "no image: none of the inputs could be read"
    if used == 0:  # every image -1: e.g. another kind of picture, with --reject-novel
        return f"{n} image{'' if n == 1 else 's'}, none in a cluster: {'it fits' if n == 1 else 'all fit'} no cluster (-1)"
    parts = [f"{n} image{'' if n == 1 else 's'} in {used} cluster{'' if used == 1 else 's'}"]
    if n_clusters is not None and used < n_clusters:
        parts[0] += f" ({n_clusters - used} of the model's {n_clusters} got none)"
    if (c < 0).any():
        parts.append(f"{int((c < 0).sum())} fit no cluster (-1)")
    if len(sizes):
        parts.append(f"sizes {int(sizes[sizes > 0].min())}..{int(sizes.max())}")
        parts.append(f"mean confidence {float(np.mean(assignments.confidence)):.3f}")
    return ", ".join(parts)


def describe_choice(kind: str, chosen: str, scores: dict, central: dict | None = None) -> str:
    """One line on a label-free choice: ``kind: chose NAME (stability S; other 0.xx, ...)``;
    names that :func:`visclust.select.centrality` compared (``central``) also show their
    agreement with every candidate, which decided among them."""
    central = central or {}

    def score(k):
        s = f"stability {float(scores[k]):.3f}"
        return f"agreement with every candidate {central[k]:.3f}, {s}" if k in central else s

    others = sorted((k for k in scores if k != chosen), key=lambda k: (central.get(k, float("-inf")), scores[k]),
                    reverse=True)
    if central:
        rest = "; " + ", ".join(f"{k}: {score(k)}" for k in others) if others else ""
    else:
        rest = "; " + ", ".join(f"{k} {float(scores[k]):.3f}" for k in others) if others else ""
    return f"{kind}: chose {chosen} ({score(chosen)}{rest})"


def describe_support(view: str, support: dict | None) -> str:
    """What the neighbour-support test of the pixels view said (nothing when it did not run)."""
    from ..model import PIXELS_SUPPORT

    if not support:
        return ""
    (base, b), (pixels, p) = support.items()
    said = (f"; {pixels} kept its groups' support among the backbone's neighbours: {p:.2f} vs {b:.2f}" if view == pixels
            else f"; {pixels} was more stable but not kept: its groups are not the backbone's (support among "
                 f"the backbone's neighbours {p:.2f} vs {b:.2f}, at least {PIXELS_SUPPORT:.2f}x needed)")
    return said


def describe_copies(copies: dict | None, p: float | None,
                    otherwise: str = "the candidates' agreement decided") -> str:
    """What the input sizes' augmented-copy test said (nothing when it did not run);
    ``otherwise``: what decided where the copies did not."""
    from ..model import SIZE_TEST_P, size_by_copies

    if not copies or p is None:
        return ""
    shares = ", ".join(f"{v} {s:.1%}" for v, s in copies.items())
    verdict = ("decided the input size" if size_by_copies(copies, p) is not None
               else f"not clearly different (p >= {SIZE_TEST_P:g}), so {otherwise}")
    return f"; augmented copies recognised: {shares} (McNemar p = {p:.2g}): {verdict}"


def describe_choices(model) -> list[str]:
    """What a fitted ImageClusterer chose without labels, one line each: the view (input
    size, pixels), the pipeline, the number of clusters, what assigns the images."""
    from ..classify import describe_classifier
    from ..model import describe_sample
    from ..select import describe_k_choice

    lines = []
    view, views = getattr(model, "view_", None), getattr(model, "view_scores_", None) or {}
    copies, p = getattr(model, "view_copies_", None), getattr(model, "view_copies_p_", None)
    if view in views and len(views) > 1:
        lines.append(describe_choice("features", view, views, getattr(model, "view_centrality_", None))
                     + describe_copies(copies, p) + describe_support(view, getattr(model, "view_support_", None)))
    elif copies and view in copies:  # n_clusters='auto': the copies alone compared the input sizes
        lines.append(f"features: chose {view}"
                     + describe_copies(copies, p, otherwise="the backbone's own input size was kept"))
    fc = model.feature_clusterer_
    scores = getattr(fc, "pipeline_scores_", None) or {}
    if getattr(fc, "pipeline_", None) in scores and len(scores) > 1:
        lines.append(describe_choice("pipeline", fc.pipeline_, scores, getattr(fc, "pipeline_centrality_", None)))
    if getattr(fc, "k_scores_", None):
        lines.append(describe_k_choice(fc.k_scores_))
    line = describe_sample(fc, views=len(views) > 1)
    if line:
        lines.append(line)
    line = describe_classifier(getattr(fc, "classifier_", None))
    if line:
        lines.append(line)
    if getattr(model, "classifier_view_", None):
        lines.append(f"classifier trained on these features side by side: {model.classifier_view_}")
    return lines
