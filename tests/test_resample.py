"""visclust._resample computes Pillow's resize pixels bit for bit (checked against the
installed Pillow), and decoding through it gives exactly the pixels the Pillow path gave."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visclust import _resample
from visclust.backbones._registry import Preprocess
from visclust.exceptions import ImageReadError
from visclust.features import _decode_one, resize_crop, resize_crop_array, sized_preprocess
from visclust.io import load_image, load_image_array

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def _random_cases(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        ow, oh = (int(v) for v in rng.integers(1, 160, 2))
        if i % 4 == 0:
            box = (0.0, 0.0, float(w), float(h))
        else:
            x0, y0 = rng.uniform(0, w - 0.5), rng.uniform(0, h - 0.5)
            box = (x0, y0, rng.uniform(x0 + 0.1, w), rng.uniform(y0 + 0.1, h))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yield a, (ow, oh), box, list(PIL_FILTERS)[i % 3]


def test_resize_box_gives_pillows_pixels_exactly():
    checked = 0
    for a, size, box, interp in _random_cases(600):
        h, w = a.shape[:2]
        if not _resample.same_as_pillow(h, w, size[1], size[0], interp):
            continue
        ref = np.asarray(Image.fromarray(a).resize(size, PIL_FILTERS[interp], box=box))
        got = _resample.resize_box(a, size, box, interp)
        assert np.array_equal(ref, got), (a.shape, size, box, interp, int(np.abs(ref.astype(int) - got).max()))
        checked += 1
    assert checked > 400  # enlargements, reductions, boxes and all three filters were compared


def test_pillows_vertical_first_case_is_left_to_pillow():
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
    # many pixels as the width: the rounding differs, so that case is not reproduced ...
    assert not _resample.same_as_pillow(2000, 300, 224, 224, "bilinear")
    assert not _resample.same_as_pillow(40, 40, 4, 4, "nearest")
    with pytest.raises(ValueError, match="use Pillow"):
        _resample.resize_box(np.zeros((2000, 300, 3), np.uint8), (224, 224), (0, 0, 300, 2000), "bilinear")
    # ... and resize_crop_array still gives Pillow's pixels there (Pillow computes them)
    a = np.random.default_rng(1).integers(0, 256, (2000, 300, 3), dtype=np.uint8)
    out = np.empty((224, 224, 3), np.uint8)
    resize_crop_array(a, Preprocess(), out)
    assert np.array_equal(out, np.asarray(resize_crop(Image.fromarray(a), Preprocess())))


@pytest.mark.parametrize("shape", [(32, 32), (28, 40), (300, 200), (500, 375), (224, 224), (256, 300)])
@pytest.mark.parametrize("pre", [Preprocess(), sized_preprocess(Preprocess(), 128),
                                 Preprocess(interpolation="bicubic"), Preprocess(interpolation="nearest")],
                         ids=["224-bilinear", "128", "bicubic", "nearest"])
def test_resize_crop_array_equals_the_pillow_path(shape, pre):
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    s = pre.input_size
    out = np.empty((2, s, s, 3), np.uint8)
    resize_crop_array(a, pre, out[1])  # a slice of a batch, as the decoders fill it
    assert np.array_equal(out[1], np.asarray(resize_crop(Image.fromarray(a), pre)))


def test_a_non_contiguous_output_is_filled_too():
    a = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = np.zeros((224, 448, 3), np.uint8)[:, ::2]
    _resample.resize_box(a, (224, 224), (2.0, 2.0, 30.0, 30.0), "bilinear", out)
    assert np.array_equal(out, np.asarray(Image.fromarray(a).resize((224, 224), Image.BILINEAR, box=(2, 2, 30, 30))))


def test_the_compiled_resampler_releases_the_gil():
    # the decoding thread overlaps the model only if the resize does not hold the GIL
    assert _resample._resample_8bpc_jit.targetoptions.get("nogil") is True


def test_decoding_real_jpegs_gives_the_pillow_paths_pixels(cifar_test_dir, shared):
    paths = [p for c in sorted(cifar_test_dir.iterdir()) for p in sorted(c.iterdir())[:5]]
    paths += sorted((shared / "data/photos").iterdir())
    for pre in (Preprocess(), sized_preprocess(Preprocess(), 128)):
        s = pre.input_size
        for p in paths:
            out = np.empty((s, s, 3), np.uint8)
            _decode_one(str(p), pre, out)
            assert np.array_equal(out, np.asarray(resize_crop(load_image(p, draft_size=pre.resize_size), pre))), p


def test_load_image_array_is_load_image_as_an_array(shape_images, tmp_path):
    files = sorted(p for p in shape_images.rglob("*") if p.is_file())[:4]
    png = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(png)
    for p in files + [png]:
        assert np.array_equal(load_image_array(p), np.asarray(load_image(p))), p
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ImageReadError):
        load_image_array(bad)


def test_small_jobs_resize_with_pillow_large_ones_compiled(shape_images):
    """Loading numba costs ~1.2 s and ~230 MB once per process: below
    COMPILED_RESIZE_MIN_IMAGES images a batch dataset resizes with Pillow; the pixels are the
    same either way."""
    from visclust.features import COMPILED_RESIZE_MIN_IMAGES, BatchDataset

    paths = [str(p) for p in sorted(shape_images.rglob("*.png"))][:8]
    few = BatchDataset(paths, [np.arange(len(paths))], Preprocess())
    many = BatchDataset(paths, [np.arange(len(paths))] * (COMPILED_RESIZE_MIN_IMAGES // len(paths) + 1), Preprocess())
    assert not few.compiled_resize and many.compiled_resize
    np.testing.assert_array_equal(few[0].images.numpy(), many[0].images.numpy())
