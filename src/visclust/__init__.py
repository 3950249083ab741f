"""visclust: group unlabeled images by what they show, using pretrained deep features,
then assign new images to those groups.

>>> import visclust
>>> model = visclust.ImageClusterer(n_clusters=10).fit(["photos/"])   # doctest: +SKIP
>>> model.save("photos.vcm"); visclust.load("photos.vcm")             # doctest: +SKIP
"""

__version__ = "0.1.0"

from .exceptions import VisclustError  # noqa: E402
from .model import FeatureClusterer, ImageClusterer  # noqa: E402


def load(path, weights=None):
    """Load a model file written by ``save`` (an ImageClusterer or a FeatureClusterer)."""
    from .artifact import load_model

    return load_model(path, weights=weights)


__all__ = ["FeatureClusterer", "ImageClusterer", "VisclustError", "load", "__version__"]
