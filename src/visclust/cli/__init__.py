"""The ``visclust`` command: a thin layer over the library.

Each subcommand lives in its own module with ``register(subparsers)`` (which sets
``func``) so commands can be added without touching the others. Errors raised on purpose
(:class:`~visclust.exceptions.VisclustError`) become one line on stderr and an exit status;
a traceback means a bug. Warnings are one line each too (``visclust fit: warning: ...``).

Exit status: 0 success; 1 finished but some inputs were skipped (listed in the summary and
in a ``*.skipped.csv`` file); 2 error (bad input, option or file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

#: Subcommand modules, in the order ``visclust --help`` lists them.
COMMANDS = ["extract", "fit", "predict", "serve", "evaluate", "report", "export", "backbones", "demo"]

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="visclust",
        description="Group unlabeled images by what they show (pretrained deep features), "
        "then sort new images into those groups.",
    )
    parser.add_argument("--version", action="version", version=f"visclust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restored afterwards: main() may run inside another program
        warnings.showwarning = _warning_printer(args.command)
        return _run(args)


def _warning_printer(command: str):
    """Warnings (visclust's own and those of the libraries it calls) as one line each,
    ``visclust fit: warning: ...``, instead of Python's file, line number and source line.
    Which warnings show is unchanged (``-W`` and ``PYTHONWARNINGS`` still apply)."""
    from .._stages import break_line

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        break_line()  # not at the end of a stage's "... " line
        try:
            print(f"visclust {command}: warning: {text}", file=sys.stderr if file is None else file)
        except OSError:  # stderr closed: a warning must not end the run
            pass
    return show


def _run(args) -> int:
    from ..exceptions import VisclustError

    try:
        return int(args.func(args) or 0)
    except VisclustError as e:
        print(f"visclust {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"visclust {args.command}: interrupted; finished work was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:
        # Disk full, permission denied on an output...: name the path, no traceback.
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"visclust {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
