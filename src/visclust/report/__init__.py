"""One self-contained HTML page that shows what each cluster is.

Per cluster: its size, mean confidence and two montages, its most typical members (nearest
the centre in the model's reduced feature space) and its least typical ones. Then a 2-D map
of all images (UMAP, else t-SNE, else PCA of the reduced features; sampled above
``map_max_points``) where hovering shows an image and its path; internal scores; ACC / NMI /
ARI and a confusion matrix when labels are given; the worst-fitting images; the images
that could not be read.

The file needs no server and no network: thumbnails are downscaled JPEG data URIs (capped
per cluster), plots are inline PNGs drawn by matplotlib, the map is a small inline script.

>>> from visclust.report import report_model
>>> stats = report_model(model, assignments, "report.html", labels="folders")   # doctest: +SKIP
>>> stats.size_bytes, stats.n_thumbnails                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from .._stages import stage
from ..exceptions import InputError, LabelsError
from ..io import Assignments, atomic_output
from . import _page as P
from ._plots import cluster_colors, confidence_plot, confusion_plot, sizes_plot
from ._thumbs import atlas_uri, pick_sample, png_data_uri, thumbnail_uris

__all__ = ["ReportOptions", "ReportStats", "write_report", "report_model", "typicality", "map_embedding"]

UNASSIGNED = "unassigned (-1)"
UNLABELLED = "no label"
#: ``map_method='auto'`` uses t-SNE up to this many points, UMAP (when installed) above.
AUTO_UMAP_ABOVE = 5000


@dataclass(frozen=True)
class ReportOptions:
    """What goes into the page and how big it may get.

    Parameters
    ----------
    typical, atypical : int, default 16 and 8
        Thumbnails per cluster nearest to / farthest from its centre.
    n_outliers : int, default 48
        Worst-fitting images over all clusters.
    thumb_size : int, default 96
        Longest side of a montage thumbnail in pixels (never upscaled).
    map_max_points : int, default 20000
        The map shows a uniform sample above this many images.
    map_previews : int, default 5000
        Map points with an embedded hover preview (one shared JPEG atlas).
    map_method : {'auto', 'umap', 'tsne', 'pca'}, default 'auto'
        'auto': t-SNE up to 5,000 points, UMAP above when umap-learn is installed (else
        t-SNE); PCA for tiny inputs.
    max_skipped_rows : int, default 1000
    random_state : int, default 0
    verbose : bool, default False
        Print each long step (thumbnails, map, map previews) and its time on stderr, as
        ``visclust report`` does on a terminal.
    """

    typical: int = 16
    atypical: int = 8
    n_outliers: int = 48
    thumb_size: int = 96
    map_max_points: int = 20000
    map_previews: int = 5000
    map_method: str = "auto"
    max_skipped_rows: int = 1000
    random_state: int = 0
    verbose: bool = False

    def validate(self) -> None:
        for name in ("typical", "atypical", "n_outliers", "map_previews", "max_skipped_rows"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(f"report option {name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.thumb_size, (int, np.integer)) or not 8 <= self.thumb_size <= 512:
            raise InputError(f"report option thumb_size must be an integer in 8..512 pixels, got {self.thumb_size!r}")
        if not isinstance(self.map_max_points, (int, np.integer)) or self.map_max_points < 1:
            raise InputError(f"report option map_max_points must be a positive integer, got {self.map_max_points!r}")
        if self.map_method not in ("auto", "umap", "tsne", "pca"):
            raise InputError(f"report option map_method must be 'auto', 'umap', 'tsne' or 'pca', got {self.map_method!r}")


@dataclass
class ReportStats:
    """What :func:`write_report` wrote."""

    path: str
    size_bytes: int
    n_images: int
    n_clusters: int
    n_thumbnails: int
    n_map_points: int
    n_map_previews: int
    map_method: str
    seconds: dict = field(default_factory=dict)
    n_labelled: int | None = None  #: images with a label (scored); None without labels


# --------------------------------------------------------------------------- analysis


def typicality(features: np.ndarray, clusters: np.ndarray, centers: np.ndarray | None = None) -> np.ndarray:
    """How badly each image fits its cluster: distance to its centre divided by the median
    distance in that cluster (about 1 for an ordinary member; NaN for cluster -1).

    Parameters
    ----------
    features : ndarray (n_samples, n_features)
    clusters : ndarray (n_samples,)
        Cluster ids >= 0, or -1 for "fits no cluster".
    centers : ndarray (n_clusters, n_features), optional
        Row ``c`` is the centre of cluster ``c``; default the mean of its members.

    Returns
    -------
    ndarray (n_samples,)
    """
    Z = np.asarray(features, np.float64)
    c = np.asarray(clusters, np.int64)
    score = np.full(len(Z), np.nan)
    for k in np.unique(c[c >= 0]):
        m = c == k
        if centers is not None and k < len(centers):
            centre = np.asarray(centers[k], np.float64)
        else:
            centre = Z[m].mean(0)
        d = np.linalg.norm(Z[m] - centre, axis=1)
        scale = float(np.median(d))
        score[m] = d / scale if scale > 0 else d
    return score


def map_embedding(features: np.ndarray, method: str = "auto", random_state: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates ``(n_samples, 2)`` of ``features`` and the method that made them."""
    X = np.asarray(features, np.float32)
    n = len(X)
    if method == "auto":
        # UMAP's one-off JIT compilation costs more than t-SNE takes on a few thousand points.
        method = "tsne"
        if n > AUTO_UMAP_ABOVE:
            try:
                from .. import _jit

                _jit.tolerate_cache_errors()  # a damaged numba cache must not fail the import
                import umap  # noqa: F401

                method = "umap"
            except ImportError:
                pass
    if n < 10 or X.shape[1] <= 2:
        method = "pca"
    if method == "umap":
        from ..reduce import umap_embedding

        # min_dist > 0 spreads points inside a cluster so a person can see its shape.
        return umap_embedding(X, 2, n_neighbors=15, random_state=random_state, min_dist=0.1), "umap"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3.0))
        Y = TSNE(2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(X)
        return Y.astype(np.float32), "tsne"
    if X.shape[1] == 1:
        return np.hstack([X, np.zeros_like(X)]), "pca"
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    Y = Xc @ vt[:2].T
    if Y.shape[1] < 2:
        Y = np.hstack([Y, np.zeros((n, 2 - Y.shape[1]), Y.dtype)])
    return Y.astype(np.float32), "pca"


def _quantise(Y: np.ndarray) -> np.ndarray:
    """Map each column to integers 0..4095 (the page's coordinate space; small JSON)."""
    lo, hi = Y.min(0), Y.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.round((Y - lo) / span * 4095).astype(np.int64)


# --------------------------------------------------------------------------- the page


def write_report(output: str | os.PathLike, assignments: Assignments, features: np.ndarray, *,
                 centers: np.ndarray | None = None, labels: Sequence[str] | None = None,
                 skipped: Sequence[tuple[str, str]] | None = None, model_info: dict | None = None,
                 options: ReportOptions | None = None) -> ReportStats:
    """Write the HTML report of ``assignments`` to ``output``.

    Parameters
    ----------
    output : str or path
        The ``.html`` file to write (replaced atomically).
    assignments : visclust.io.Assignments
        Paths, clusters (-1 = fits no cluster) and confidences.
    features : ndarray (n_images, n_features)
        Features of the same images in the same order, best the model's reduced space
        (``model.feature_clusterer_.transform(raw)``): typicality and the map use it.
    centers : ndarray (n_clusters, n_features), optional
        Cluster centres in that space (``model.feature_clusterer_.cluster_centers_``).
    labels : sequence of str or None, optional
        True class of each image: adds ACC / NMI / ARI and a confusion matrix. ``None`` for
        an image nobody labelled: the scores, the matrix and each cluster's most common class
        then count the labelled images only, and the page says how many those are.
    skipped : sequence of (path, reason), optional
        Unreadable images; default ``assignments.skipped``.
    model_info : dict, optional
        Shown in the header (e.g. ``{"model": "m.vcm", "backbone": "torchvision/resnet50"}``).
    options : ReportOptions, optional

    Returns
    -------
    ReportStats
    """
    from ..evaluate import contingency, external_scores, internal_scores, match_clusters

    opts = options or ReportOptions()
    opts.validate()
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    paths = [str(p) for p in assignments.paths]
    clusters = np.asarray(assignments.clusters, np.int64)
    conf = np.asarray(assignments.confidence, np.float64)
    Z = np.asarray(features, np.float32)
    n = len(paths)
    if n == 0:
        raise InputError("nothing to report: the assignments have no rows")
    if Z.ndim != 2 or len(Z) != n:
        raise InputError(f"features must be (n_images, n_features) with one row per assignment ({n}), got shape {Z.shape}")
    if len(clusters) != n or len(conf) != n:
        raise InputError("assignments are inconsistent: paths, clusters and confidence differ in length")
    labelled = None
    if labels is not None:
        labels = [None if x is None else str(x) for x in labels]
        if len(labels) != n:
            raise LabelsError(f"{len(labels)} labels for {n} images; give one label per assigned image")
        labelled = np.flatnonzero([x is not None for x in labels])
        if not len(labelled):
            raise LabelsError(f"none of the {n} images has a label; pass labels=None for a report without scores")
    skipped = list(assignments.skipped if skipped is None else skipped)

    ids = [int(k) for k in np.unique(clusters[clusters >= 0])]
    has_rejected = bool((clusters < 0).any())
    colors = cluster_colors(len(ids)) + (["#9a9a9a"] if has_rejected else [])
    names = [str(k) for k in ids] + ([UNASSIGNED] if has_rejected else [])
    slot = {k: i for i, k in enumerate(ids)}
    cidx = np.array([slot.get(int(k), len(ids)) for k in clusters], np.int64)  # -1 -> last slot

    score = typicality(Z, clusters, centers)
    timing["typicality"] = time.perf_counter() - t0

    # -- scores
    t = time.perf_counter()
    internal = internal_scores(Z, clusters, random_state=opts.random_state)
    external = matched = None
    if labels is not None:
        known = [labels[i] for i in labelled]
        external = external_scores(known, clusters[labelled])
        matched = match_clusters(known, clusters[labelled])
    timing["scores"] = time.perf_counter() - t

    # -- which images get thumbnails
    members = {k: np.flatnonzero(clusters == k) for k in ids}
    typical_of, atypical_of = {}, {}
    for k, idx in members.items():
        order = idx[np.argsort(score[idx], kind="stable")]
        typical_of[k] = order[: opts.typical]
        rest = order[len(typical_of[k]):]
        atypical_of[k] = rest[::-1][: opts.atypical]
    fits = np.flatnonzero(clusters >= 0)
    outliers = fits[np.argsort(-score[fits], kind="stable")][: opts.n_outliers]
    rejected = np.flatnonzero(clusters < 0)
    rejected_shown = rejected[np.argsort(conf[rejected], kind="stable")][: opts.n_outliers]
    wanted = [paths[i] for k in ids for i in (*typical_of[k], *atypical_of[k])]
    wanted += [paths[i] for i in (*outliers, *rejected_shown)]
    t = time.perf_counter()
    with stage(opts.verbose, f"thumbnails of {len(set(wanted)):,} images"):
        uris = thumbnail_uris(wanted, opts.thumb_size)
    timing["thumbnails"] = time.perf_counter() - t

    # -- map
    t = time.perf_counter()
    sample = pick_sample(n, opts.map_max_points, opts.random_state)
    with stage(opts.verbose, f"map of {len(sample):,} points"):
        Y, method = map_embedding(Z[sample], opts.map_method, opts.random_state)
    q = _quantise(Y)
    timing["map"] = time.perf_counter() - t
    t = time.perf_counter()
    rng = np.random.default_rng(opts.random_state)
    with_preview = np.sort(rng.permutation(len(sample))[: opts.map_previews])
    with stage(opts.verbose, f"map previews of {len(with_preview):,} images"):
        atlas, ok = atlas_uri([paths[sample[j]] for j in with_preview])
    tile = np.full(len(sample), -1, np.int64)
    tile[with_preview] = np.where(ok, np.arange(len(with_preview)), -1)
    timing["map_previews"] = time.perf_counter() - t

    map_data = {
        "x": q[:, 0].tolist(), "y": q[:, 1].tolist(), "c": cidx[sample].tolist(), "t": tile.tolist(),
        "f": [round(float(v), 3) for v in conf[sample]], "p": [P.clean(os.path.abspath(paths[i])) for i in sample],
        "colors": colors, "clusterNames": names, "atlas": {"cell": 40, "cols": 64},
    }
    classes = None
    if labels is not None:
        classes = sorted(set(known))
        cls_slot = {c: i for i, c in enumerate(classes)}
        unlabelled = len(labelled) < n
        map_data.update(l=[cls_slot.get(labels[i], len(classes)) for i in sample],
                        classes=[P.clean(c) for c in classes] + ([UNLABELLED] if unlabelled else []),
                        classColors=cluster_colors(len(classes)) + (["#9a9a9a"] if unlabelled else []))

    # -- plots
    t = time.perf_counter()
    sizes = [len(members[k]) for k in ids]
    mean_conf = [float(conf[members[k]].mean()) for k in ids]
    plots = [("Cluster sizes and mean confidence", sizes_plot(ids, sizes, mean_conf, colors[: len(ids)])),
             ("Confidence of every image", confidence_plot(conf))]
    confusion = None
    if labels is not None:
        m, cls_vals, cl_vals = contingency(known, clusters[labelled])
        cls_order = {c: i for i, c in enumerate(cls_vals)}
        # Columns: clusters matched to classes first, in class order, then the unmatched.
        key = [(cls_order[matched[c]] if c in matched else len(cls_vals), int(c)) for c in cl_vals]
        order = sorted(range(len(cl_vals)), key=lambda j: key[j])
        col_names = [f"{c}→{matched[c]}" if c in matched and int(c) >= 0 else str(c) for c in cl_vals]
        confusion = confusion_plot(m[:, order], [str(c) for c in cls_vals], [col_names[j] for j in order])
    timing["plots"] = time.perf_counter() - t

    # -- HTML
    t = time.perf_counter()
    n_thumbs = 0

    def grid(indices, caption=None) -> str:
        nonlocal n_thumbs
        figs = []
        for i in indices:
            uri = uris.get(paths[i])
            n_thumbs += uri is not None
            figs.append(P.thumb(uri, paths[i], caption(i) if caption else ""))
        return f'<div class="grid">{"".join(figs)}</div>'

    info = dict(model_info or {})
    subtitle = " · ".join(f"{k}: {v}" for k, v in info.items())
    parts = []
    cards = [(f"{n:,}", "images"), (str(len(ids)), "clusters"), (f"{float(conf.mean()):.3f}", "mean confidence")]
    if has_rejected:
        cards.append((f"{len(rejected):,}", "fit no cluster"))
    cards.append((f"{len(skipped):,}", "skipped (unreadable)"))
    if internal.get("silhouette") is not None:
        cards.append((f"{internal['silhouette']:.3f}", "silhouette"))
    if external:
        cards += [(f"{external['acc']:.3f}", "ACC"), (f"{external['nmi']:.3f}", "NMI"), (f"{external['ari']:.3f}", "ARI")]
        if len(labelled) < n:
            cards.append((f"{len(labelled):,} of {n:,}", "labelled (scored)"))
    parts.append('<div class="cards">' + "".join(f'<div class="card"><b>{P.text(v)}</b><span>{P.text(k)}</span></div>'
                                                   for v, k in cards) + "</div>")
    toc = "".join(f'<a href="#cluster-{k}"><i style="background:{colors[slot[k]]}"></i>{k} · {len(members[k]):,}</a>'
                  for k in ids)
    parts.append(f"<section><h2>Clusters</h2><nav class=\"toc\">{toc}</nav></section>")

    legend = "".join(f'<button data-c="{i}"><i style="background:{colors[i]}"></i>{P.text(nm)}</button>'
                     for i, nm in enumerate(names))
    colour_by = ('<label>colour by <select id="colour-by"><option value="cluster">cluster</option>'
                 '<option value="class">true class</option></select></label>') if labels is not None else ""
    sampled = f" (a uniform sample of {len(sample):,} of {n:,})" if len(sample) < n else ""
    atlas_img = f'<img id="atlas" src="{atlas}" alt="map previews" hidden>' if atlas else ""
    parts.append(
        f"<section><h2>Map of all images</h2><p class=\"meta\">{P.text(method.upper())} of the model's features"
        f"{P.text(sampled)}; nearby points look alike to the model. Hover a point to see it, click to pin it; "
        f"click the legend to hide a cluster. {colour_by}</p><div class=\"legend\">{legend}</div>"
        f'<div class="maprow"><canvas id="map" width="900" height="620"></canvas>'
        f'<div id="info"><canvas id="preview" width="128" height="128"></canvas><div class="fields"></div></div></div>'
        f"{atlas_img}</section>")

    plot_html = "".join(f'<figure><img src="{png_data_uri(png)}" alt="{P.text(title)}"><figcaption class="note">'
                        f"{P.text(title)}</figcaption></figure>" for title, png in plots)
    parts.append(f'<section><h2>Sizes and confidence</h2><div class="plots">{plot_html}</div></section>')

    score_rows = [["silhouette (cosine, higher is better)", P.fmt(internal.get("silhouette"))],
                  ["Davies-Bouldin (lower is better)", P.fmt(internal.get("davies_bouldin"))],
                  ["Calinski-Harabasz (higher is better)", P.fmt(internal.get("calinski_harabasz"), 1)]]
    if external:
        of = f", the {len(labelled):,} labelled images of {n:,}" if len(labelled) < n else ""
        score_rows += [[f"ACC (clusters matched to classes{of})", P.fmt(external["acc"])], ["NMI", P.fmt(external["nmi"])],
                       ["ARI", P.fmt(external["ari"])], ["purity", P.fmt(external["purity"])]]
    conf_html = ""
    if confusion is not None:
        conf_html = (f'<h3>Confusion matrix (rows: classes; columns: clusters, each matched to one class)</h3>'
                     f'<img src="{png_data_uri(confusion)}" alt="confusion matrix" style="max-width:100%">')
    parts.append(f"<section><h2>Scores</h2>{P.table(['score', 'value'], score_rows)}{conf_html}</section>")

    for k in ids:
        idx = members[k]
        meta = f"{len(idx):,} images ({len(idx) / n:.1%}) · mean confidence {mean_conf[slot[k]]:.3f}"
        if labels is not None:
            counts: dict[str, int] = {}
            for i in idx:
                if labels[i] is not None:
                    counts[labels[i]] = counts.get(labels[i], 0) + 1
            n_known = sum(counts.values())
            if n_known:
                top = max(counts, key=counts.get)
                meta += f" · most common class {top} ({counts[top] / n_known:.0%}"
                meta += ")" if n_known == len(idx) else f" of {n_known:,} labelled)"
            else:
                meta += " · no labelled image"
            if k in matched:
                meta += f" · matched to {matched[k]}"
        parts.append(
            f'<section class="cluster" id="cluster-{k}"><h2><i style="background:{colors[slot[k]]}"></i>Cluster {k}</h2>'
            f'<p class="meta">{P.text(meta)}</p><h3>Most typical (nearest the centre)</h3>{grid(typical_of[k])}'
            + (f"<h3>Least typical</h3>{grid(atypical_of[k])}" if len(atypical_of[k]) else "") + "</section>")

    cap = lambda i: f"{clusters[i]} · {score[i]:.2f}"  # noqa: E731
    out_html = (f'<p class="meta">The {len(outliers)} images farthest from their cluster\'s centre, relative to '
                f"the cluster's typical spread (caption: cluster · distance in median distances).</p>{grid(outliers, cap)}")
    if len(rejected):
        out_html += (f"<h3>Fit no cluster: {len(rejected):,} images (least confident first)</h3>"
                     f"{grid(rejected_shown, lambda i: f'{conf[i]:.2f}')}")
    parts.append(f"<section><h2>Outliers</h2>{out_html}</section>")

    if skipped:
        rows = [[p, reason[len(p) + 2:] if reason.startswith(f"{p}: ") else reason]
                for p, reason in skipped[: opts.max_skipped_rows]]
        more = (f'<p class="note">… and {len(skipped) - opts.max_skipped_rows:,} more</p>'
                if len(skipped) > opts.max_skipped_rows else "")
        skip_html = P.table(["path", "reason"], rows, "skipped") + more
    else:
        skip_html = '<p class="meta">Every image could be read.</p>'
    parts.append(f"<section><h2>Skipped images ({len(skipped):,})</h2>{skip_html}</section>")

    from .. import __version__

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Written by visclust {P.text(__version__)} on {P.text(when)}.</p>')
    doc = P.page("visclust report", subtitle or f"{n:,} images in {len(ids)} clusters", "".join(parts),
                 P.json_for_script(map_data))
    size = _write_atomic(output, doc)
    timing["html"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    return ReportStats(os.fspath(output), size, n, len(ids), n_thumbs, len(sample), int((tile >= 0).sum()), method, timing,
                       None if labelled is None else len(labelled))


def _write_atomic(path: str | os.PathLike, doc: str) -> int:
    data = doc.encode("utf-8")
    with atomic_output(path, "wb") as f:
        f.write(data)
    return len(data)


# --------------------------------------------------------------------------- from a model


def report_model(model, assignments: Assignments, output: str | os.PathLike, *, labels=None, features=None,
                 model_info: dict | None = None, options: ReportOptions | None = None) -> ReportStats:
    """Report ``assignments`` made by a fitted :class:`~visclust.ImageClusterer`.

    Parameters
    ----------
    model : ImageClusterer
        Fitted or loaded; its backbone computes the features (unless ``features`` is given).
    assignments : Assignments
        E.g. ``visclust.io.read_assignments("fit.csv")`` or ``model.assign(...)``.
    output : str or path
    labels : 'folders', a path,label CSV, or a sequence aligned with ``assignments.paths``
        Images the CSV does not name (or ``None`` in the sequence) are shown but not scored.
    features : FeatureResult, optional
        Raw backbone features of the assigned images (e.g. from a feature store).
    model_info : dict, optional
        Extra header entries.
    options : ReportOptions, optional

    Returns
    -------
    ReportStats
        ``seconds['features']`` is the time spent extracting features.
    """
    from ..classify import describe_classifier
    from ..io import resolve_labels
    from ..model import _check_fitted, describe_configs, describe_sample

    _check_fitted(model, "feature_clusterer_")
    t = time.perf_counter()
    res = features if features is not None else model.extract(list(dict.fromkeys(assignments.paths)))
    extract_s = time.perf_counter() - t
    row_of = {}
    for i, p in enumerate(assignments.paths):
        row_of.setdefault(p, i)
    keep = [row_of[p] for p in res.paths if p in row_of]
    feat_rows = [j for j, p in enumerate(res.paths) if p in row_of]
    if not keep:
        raise InputError("none of the assigned images could be read now; were the files moved? "
                         "(the report needs the images to compute features and thumbnails)")
    kept = Assignments([assignments.paths[i] for i in keep], np.asarray(assignments.clusters)[keep],
                       np.asarray(assignments.confidence)[keep])
    if labels is None:
        y = None
    elif isinstance(labels, (str, os.PathLike)):
        y = resolve_labels(os.fspath(labels), kept.paths, allow_missing=True)
    else:
        if len(labels) != len(assignments.paths):
            raise LabelsError(f"{len(labels)} labels for {len(assignments.paths)} assigned images; give one per row")
        y = [labels[i] for i in keep]
    fc = model.feature_clusterer_
    Z = fc.transform(res.features[feat_rows])
    cfgs = getattr(model, "backbone_configs_", None) or [model.backbone_config_]
    info = {"backbone": describe_configs(cfgs), "clusters": fc.n_clusters_,
            "method": getattr(fc, "pipeline_", None) or fc.method}
    if getattr(fc, "k_scores_", None):
        from ..select import other_levels
        nxt = other_levels(fc.k_scores_)
        info["clusters"] = f"{fc.n_clusters_} (--clusters auto" + (f"; next best {', '.join(map(str, nxt))})" if nxt else ")")
    rule = describe_classifier(getattr(fc, "classifier_", None))
    if rule:
        info["classifier"] = rule.split(": ", 1)[1]
    sample = describe_sample(fc)
    if sample:
        info["clustered"] = sample.split(": ", 1)[1]
    info.update(model_info or {})
    skipped = list(assignments.skipped) + [s for s in res.skipped if s not in assignments.skipped]
    stats = write_report(output, kept, Z, centers=getattr(fc, "cluster_centers_", None), labels=y,
                         skipped=skipped, model_info=info, options=options)
    stats.seconds["features"] = extract_s
    return stats
