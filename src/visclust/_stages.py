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


@contextlib.contextmanager
def stage(on: bool, text: str):
    """``text ...`` on stderr before the block, `` N.N s`` after it (`` stopped`` if it raised)."""
    if not on:
        yield
        return
    t0 = time.perf_counter()
    _write(f"{text} ...")
    try:
        yield
    except BaseException:
        _write(" stopped\n")
        raise
    _write(f" {time.perf_counter() - t0:.1f} s\n")


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the fit goes on
        pass
