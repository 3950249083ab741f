"""visclust export --assignments CSV --to DIR [--mode symlink|copy]"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="lay the images out in one folder per cluster",
                       description="Create DIR/<cluster>/<file name> for every row of an assignments CSV, as symbolic "
                       "links (default) or copies. Nothing is overwritten or deleted: a name already taken gets a -1, "
                       "-2 ... suffix. What went where is written to DIR/export.csv (source,destination,cluster). Exporting "
                       "into a folder that an earlier export with other clusters filled (after a refit) is refused, "
                       "unless --replace.")
    p.add_argument("--assignments", required=True, metavar="CSV", help="CSV written by fit or predict; - reads it from standard input")
    p.add_argument("--to", required=True, metavar="DIR", help="export folder (created if needed)")
    p.add_argument("--mode", choices=("symlink", "copy"), default="symlink",
                   help="symbolic links to the originals or copies (default %(default)s)")
    p.add_argument("--replace", action="store_true",
                   help="when an earlier export into DIR put some of these images in other clusters' folders, "
                   "remove those links or copies (only while each is still a link to its image or an unchanged "
                   "copy) instead of refusing")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_clusters
    from ..io import read_assignments
    from . import EXIT_OK, EXIT_PARTIAL

    result = export_clusters(read_assignments(args.assignments), args.to, mode=args.mode, replace=args.replace)
    if not args.quiet:
        folders = len({r[1].split("/", 1)[0] for r in result.rows})
        extra = []
        if result.renamed:
            extra.append(f"{result.renamed} renamed because the name was taken")
        if result.reused:
            extra.append(f"{result.reused} already in place")
        if result.replaced:
            extra.append(f"{result.replaced} removed from the earlier export's other cluster folders")
        more = f" ({'; '.join(extra)})" if extra else ""
        print(f"exported {len(result.rows)} images into {folders} folder{'' if folders == 1 else 's'} under {result.root} as "
              f"{'links' if args.mode == 'symlink' else 'copies'}{more}; list in {result.csv_path}", file=sys.stderr)
        if result.missing:
            print(f"not exported: {len(result.missing)} image(s):", file=sys.stderr)
            for path, reason in result.missing[:10]:
                print(f"  {path}: {reason}", file=sys.stderr)
            if len(result.missing) > 10:
                print(f"  ... and {len(result.missing) - 10} more", file=sys.stderr)
    return EXIT_PARTIAL if result.missing else EXIT_OK
