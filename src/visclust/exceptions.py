"""Every error visclust raises on purpose.

Each class derives from :class:`VisclustError` *and* from the builtin it resembles, so
callers may catch either. Messages say what was wrong, what was expected and how to fix
it; the CLI prints them as one line (``exit_code`` gives its exit status).
"""

from __future__ import annotations


class VisclustError(Exception):
    """Base class of all errors raised on purpose by visclust."""

    exit_code = 2


class InputError(VisclustError, ValueError):
    """An input path, list or option value cannot be used."""


class ImageReadError(VisclustError, OSError):
    """One image file cannot be read or decoded (the run skips it and reports it)."""


class NoImagesError(InputError):
    """The inputs named no readable image at all."""


class UnknownBackboneError(VisclustError, KeyError):
    """A backbone name is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(VisclustError, RuntimeError):
    """Pretrained weights can be neither found locally nor downloaded."""


class MissingDependencyError(VisclustError, ImportError):
    """An optional extra (timm, open_clip, onnxruntime, umap, ray, ...) is not installed."""


class NotFittedError(VisclustError, AttributeError):
    """``predict`` or ``transform`` was called before ``fit``."""


class ModelFileError(VisclustError, ValueError):
    """A model file is truncated, edited, unsafe or from an incompatible version."""


class FeatureStoreError(VisclustError, OSError):
    """The feature store cannot be read or written."""


class LabelsError(InputError):
    """Ground-truth labels cannot be read or do not match the assignments."""


class DistributedExtractionError(VisclustError, RuntimeError):
    """The Ray cluster could not be reached or the distributed extraction failed."""
