"""visclust extract INPUT... --backbone NAME [--weights FILE] [--backbone NAME ...] --store DIR [--engine E] [--dtype D]
[--executor local|ray [--ray-address ADDR]]"""

from __future__ import annotations

import sys

from ._common import (add_backbone_options, add_runtime_options, add_store_options, backbone_arg, input_size_arg,
                      progress_flag, weights_arg)


def register(sub) -> None:
    p = sub.add_parser("extract", help="compute features into a feature store (incremental, resumable)",
                       description="Compute the backbone's features of every input image into a feature store. "
                       "Images already there (same path, size and modification time) are not computed again; "
                       "an interrupted run (even kill -9) resumes where it stopped. `fit` and `predict` with the "
                       "same --store reuse the features.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories (recursive), .txt lists of paths, or - for paths piped on standard input")
    add_backbone_options(p)
    add_store_options(p, store_required=True, extra_engines=("ray",),
                      extra_help="; ray = --executor ray with the auto runtime")
    add_runtime_options(p)
    g = p.add_argument_group("distributed (pip install 'visclust[distributed]')")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process and its decoding workers; ray: Ray Data actors, one model each "
                   "(one GPU each when the cluster has GPUs), writing the same store (default %(default)s)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to run on, e.g. 10.0.0.1:6379 (implies --executor ray; default $RAY_ADDRESS, "
                   "else a local Ray instance started for this run). Images and --weights must be at the same "
                   "paths on every node; with --executor ray, --workers is the number of actors")
    g.add_argument("--ray-object-store", type=int, metavar="MB",
                   help="shared memory for a local Ray instance's object store (default: Ray's, 30%% of RAM)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="how features are stored (default %(default)s; float16 halves the size)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (the torch engine; on an H200, ResNet-50 after ~20 s of "
                   "compiling: 1.4-1.5x model only, 1.16x end to end; not with --executor ray)")
    p.add_argument("--shard-size", type=int, default=4096, metavar="N",
                   help="rows per committed shard; a kill loses at most this many rows or 30 s of work "
                   "(default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from ..backbones import create_backbone
    from ..engines import EngineFallbackWarning
    from ..exceptions import InputError
    from ..features import backbone_at_size, compute_features, small_image_backbone
    from ..io import collect_inputs
    from ..model import backbone_specs
    from . import EXIT_OK, EXIT_PARTIAL

    if args.shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {args.shard_size}")
    specs = backbone_specs(backbone_arg(args), weights_arg(args))
    use_ray = args.executor == "ray" or args.engine == "ray" or args.ray_address is not None
    if args.ray_object_store is not None and not use_ray:
        raise InputError("--ray-object-store needs --executor ray")
    if args.compile and use_ray:
        raise InputError("--compile is not available with --executor ray; leave it out")
    runs, labels, paths = [], [], None
    size = input_size_arg(args)
    if size == "auto" and len(specs) > 1:  # both sizes (what `fit` compares) only for a single backbone
        size = "backbone"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EngineFallbackWarning)
        for name, weights in specs:  # several backbones: each one's rows in its own part of the store
            if use_ray:  # lists the inputs on the cluster too; sizes as below
                for i, (spec, stats) in enumerate(_extract_ray(args, name, weights, size)):
                    labels.append((name if spec.preprocess is None else f"{name}@{spec.preprocess['input_size']}px", i > 0))
                    runs.append(stats)
                continue
            paths = collect_inputs(args.inputs) if paths is None else paths
            backbone = create_backbone(name, weights=weights, pretrained=not args.random_weights)
            todo = [backbone_at_size(backbone, size)] if isinstance(size, int) else [backbone]
            if size == "auto":  # what `fit` compares on small images: both sizes
                todo += [bb for bb in [small_image_backbone(backbone, paths)] if bb is not None]
            for i, bb in enumerate(todo):  # the second size reads the same files: its skips are not counted twice
                labels.append((name if bb is backbone else f"{name}@{bb.preprocess.input_size}px", i > 0))
                runs.append(compute_features(bb, paths, args.store, batch_size=args.batch_size,
                                             num_workers=args.workers, device=args.device, progress=progress_flag(args),
                                             engine=args.engine, dtype=args.dtype, shard_rows=args.shard_size,
                                             compile=args.compile))
    for w in caught:  # the engine fallback and unreadable shards: one line each, no traceback
        if issubclass(w.category, UserWarning):
            print(f"visclust extract: warning: {w.message}", file=sys.stderr)
    skipped = 0
    for (name, again), stats in zip(labels, runs):
        if not args.quiet:
            rate = f" at {stats.images_per_second:.1f} img/s ({stats.engine})" if stats.n_computed else ""
            head = f"{name}: " if len(runs) > 1 else ""
            print(f"{head}{stats.n_inputs} images: {stats.n_computed} computed{rate}, {stats.n_cached} already in "
                  f"the store, {len(stats.skipped)} skipped; store {stats.store_path}", file=sys.stderr)
        if again:
            continue
        skipped += len(stats.skipped)
        if stats.skipped and not args.quiet:
            print(f"skipped {len(stats.skipped)} unreadable image(s); list in {stats.store_path}/skipped.csv:",
                  file=sys.stderr)
            for _, reason in stats.skipped[:10]:
                print(f"  {reason}", file=sys.stderr)
            if len(stats.skipped) > 10:
                print(f"  ... and {len(stats.skipped) - 10} more", file=sys.stderr)
    return EXIT_PARTIAL if skipped else EXIT_OK


def _extract_ray(args, name, weights, size):
    from ..distributed import BackboneSpec, extract_ray
    from ..exceptions import InputError

    if args.ray_object_store is not None and args.ray_object_store < 1:
        raise InputError(f"--ray-object-store must be a positive number of MB, got {args.ray_object_store}")
    spec = BackboneSpec(name, weights=weights, pretrained=not args.random_weights)
    return extract_ray(
        spec, args.inputs, args.store, address=args.ray_address, num_workers=args.workers, batch_size=args.batch_size,
        engine="auto" if args.engine == "ray" else args.engine, device=args.device, dtype=args.dtype,
        shard_rows=args.shard_size, progress=progress_flag(args), input_size=size,
        object_store_memory=None if args.ray_object_store is None else args.ray_object_store * 2**20)
