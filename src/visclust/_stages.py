"""One line per long stage of a fit, on stderr, for someone watching a terminal.

Extraction has its progress bar; what follows it (choosing the pipeline, clustering a large
sample, training the classifier) can take minutes on a large collection, and a silent
terminal looks hung. :class:`visclust.FeatureClusterer` (``verbose=True``, which
:class:`visclust.ImageClusterer` sets when its progress is shown) prints ``what ...`` as a
stage starts and its time when it ends: ``backbone@128px: choosing the pipeline: 6 candidates
x 3 runs on 300 images ... 1.6 s`` (a fit of 300 CIFAR-10 photos).
"""

from __future__ import annotations

import contextlib
import sys
import time

#: The stage whose line is on the screen waiting for its time, if any.
_open: list[str] = []


@contextlib.contextmanager
def stage(on: bool, text: str):
    """``text ...`` on stderr before the block, `` N.N s`` after it (`` stopped`` if it raised).
    Output between the two (a warning) calls :func:`break_line` first; the time then comes on
    a line of its own, ``text: N.N s``."""
    if not on:
        yield
        return
    t0 = time.perf_counter()
    _write(f"{text} ...")
    _open[:] = [text]
    try:
        yield
    except BaseException:
        _end(text, "stopped")
        raise
    _end(text, f"{time.perf_counter() - t0:.1f} s")


def break_line() -> None:
    """End the open stage line, so that other output starts on a line of its own."""
    if _open and _open[0] is not None:
        _write("\n")
        _open[0] = None


def _end(text: str, what: str) -> None:
    _write(f" {what}\n" if _open and _open[0] is not None else f"{text}: {what}\n")
    _open.clear()


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the fit goes on
        pass
