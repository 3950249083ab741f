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

#: True while a stage's ``text ...`` waits on the screen for its time.
_line_open = False


@contextlib.contextmanager
def stage(on: bool, text: str):
    """``text ...`` on stderr before the block, `` N.N s`` after it (`` stopped`` if it raised).
    Output between the two (a warning) calls :func:`break_line` first; the time then comes on
    a line of its own, ``text: N.N s``."""
    global _line_open
    if not on:
        yield
        return
    t0 = time.perf_counter()
    _write(f"{text} ...")
    _line_open = True
    try:
        yield
    except BaseException:
        _end(text, "stopped")
        raise
    _end(text, f"{time.perf_counter() - t0:.1f} s")


def break_line() -> None:
    """End the open stage line, so that other output starts on a line of its own."""
    global _line_open
    if _line_open:
        _write("\n")
        _line_open = False


def _end(text: str, what: str) -> None:
    global _line_open
    _write(f" {what}\n" if _line_open else f"{text}: {what}\n")
    _line_open = False


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the fit goes on
        pass
