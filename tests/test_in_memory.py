"""Images already in memory (PIL images, numpy arrays) are assigned as their files are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_shape_images
from visclust import ImageClusterer
from visclust.exceptions import InputError
from visclust.io import collect_inputs, image_object_array, is_image_object, load_image_array


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model of two backbones (random MobileNetV2 at the size the fit chose, and the pixels),
    saved and loaded again, as a service would use it; and the files it was fitted on. Made
    once for the module's tests, which only assign with it."""
    tmp_path = tmp_path_factory.mktemp("fitted")
    shape_images = make_shape_images(tmp_path / "shapes")
    m = ImageClusterer(backbone="torchvision/mobilenet_v2", pretrained=False, n_clusters=3, engine="torch",
                       num_workers=0, pixels=True, progress=False).fit([shape_images])
    m.save(tmp_path / "m.vcm")
    back = ImageClusterer.load(tmp_path / "m.vcm")
    assert [c.name for c in back.backbone_configs_] == ["torchvision/mobilenet_v2", "baseline/pixels"]
    return back, collect_inputs([shape_images])


def test_pil_images_and_arrays_get_the_clusters_and_confidences_of_their_files(fitted):
    model, paths = fitted
    files = model.assign(paths)
    assert files.paths == paths
    opened = [Image.open(p) for p in paths]
    for given in (opened, [np.asarray(im.convert("RGB")) for im in opened], np.stack([np.asarray(im) for im in opened])):
        got = model.assign(given)
        assert got.paths == [f"<image {i}>" for i in range(len(paths))] and got.skipped == []
        np.testing.assert_array_equal(got.clusters, files.clusters)
        np.testing.assert_allclose(got.confidence, files.confidence, rtol=1e-6, atol=1e-7)
    assert model.predict(opened[5]).tolist() == [files.clusters[5]]  # one image alone
    assert len(model.assign_images([])) == 0
    features = model.extract(opened[:4])
    np.testing.assert_allclose(features.features, model.extract(paths[:4]).features, rtol=1e-5, atol=1e-6)
    assert features.paths == [f"<image {i}>" for i in range(4)] and features.features.shape == (4, 1280 + 3072)


def test_grey_and_rgba_arrays_are_read_as_such_files_are(tmp_path, fitted):
    model, _ = fitted
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    rgba = rng.integers(0, 256, (40, 56, 4), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for array, file in ((grey, "grey.png"), (grey[:, :, None], "grey.png"), (rgba, "rgba.png")):
        np.testing.assert_array_equal(image_object_array(array), load_image_array(tmp_path / file))
    files = model.assign([str(tmp_path / "grey.png"), str(tmp_path / "rgba.png")])
    got = model.assign([grey, rgba])
    np.testing.assert_array_equal(got.clusters, files.clusters)
    np.testing.assert_allclose(got.confidence, files.confidence, rtol=1e-6, atol=1e-7)


def test_exif_orientation_is_applied_and_the_callers_image_is_left_as_it_was(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = (255, 0, 0)  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    im = Image.open(tmp_path / "r.jpg")
    upright = image_object_array(im)
    assert upright.shape == (80, 40, 3)  # used upright, as the file is
    np.testing.assert_array_equal(upright, load_image_array(tmp_path / "r.jpg"))
    assert im.size == (80, 40) and im.getexif()[0x0112] == 6  # the caller's image is not rotated


@pytest.mark.parametrize("bad, says", [
    (np.zeros((32, 32, 3), np.float32), "a float32 array; give uint8 pixels 0-255"),
    (np.zeros((3, 32, 32), np.uint8), "looks channels-first"),
    (np.zeros((32, 32, 2), np.uint8), "shape (32, 32, 2)"),
    (np.zeros((0, 32), np.uint8), "an empty image"),
    (Image.new("RGB", (0, 5)), "an empty image"),
    (3.5, "a float; give a PIL image or a numpy uint8 array"),
])
def test_an_image_that_cannot_be_used_is_one_clear_error_naming_it(fitted, bad, says):
    model, _ = fitted
    with pytest.raises(InputError) as e:
        model.assign([np.zeros((8, 8, 3), np.uint8), bad])
    assert str(e.value).startswith("<image 1>: ") and says in str(e.value) and "\n" not in str(e.value)


def test_paths_and_images_are_not_mixed_and_an_array_of_paths_is_paths(fitted):
    model, paths = fitted
    with pytest.raises(InputError, match="either paths or images in memory"):
        model.assign([paths[0], Image.open(paths[1])])
    assert not is_image_object(np.array(paths)) and is_image_object(np.zeros((2, 2), np.uint8))


def test_the_engine_is_made_once_per_view_and_kept(fitted, monkeypatch):
    """Making an engine (ONNX Runtime's session, its check against PyTorch) costs ten times
    more than assigning one image: a service's model makes it on the first call only."""
    import copy

    import visclust.engines as engines

    model, paths = fitted
    model.__dict__.pop("_engines", None)  # as just loaded (the module's other tests share this model)
    made = []
    real = engines.create_engine
    monkeypatch.setattr(engines, "create_engine", lambda *a, **k: made.append(a[0].name) or real(*a, **k))
    first = model.assign([Image.open(paths[0])])
    for _ in range(3):
        model.assign([Image.open(paths[0])])
        model.assign(paths[:2])
    assert sorted(made) == ["baseline/pixels", "torchvision/mobilenet_v2"]
    twin = copy.deepcopy(model)  # the kept sessions are not copied (they do not pickle): made again when needed
    assert twin.assign([Image.open(paths[0])]).clusters.tolist() == first.clusters.tolist() and len(made) == 4


def test_a_fit_keeps_only_the_engines_of_the_views_it_chose(shape_images):
    m = ImageClusterer(backbone="torchvision/mobilenet_v2", pretrained=False, n_clusters=3, engine="torch",
                       num_workers=0, pixels=False, progress=False).fit([shape_images])
    assert set(m.view_scores_) == {"backbone", "backbone@192px"}  # both sizes were extracted
    assert [k[0] for k in m._engines] == [m.backbone_config_.cache_key()]


def test_a_fit_on_images_in_memory_equals_the_fit_on_their_files(shape_images):
    """The whole default fit (both input sizes compared for these small images, the pixels
    view tested) on PIL images gives the fit on the files: the same choices and labels."""
    paths = collect_inputs([shape_images])
    kw = dict(backbone="torchvision/mobilenet_v2", pretrained=False, n_clusters=3, engine="torch", num_workers=0,
              progress=False)
    files = ImageClusterer(**kw).fit(paths)
    memory = ImageClusterer(**kw).fit([Image.open(p) for p in paths])
    assert set(memory.view_scores_) == {"backbone", "backbone@192px", f"{files.view_}+pixels"} == set(files.view_scores_)
    assert memory.view_scores_ == pytest.approx(files.view_scores_, abs=1e-6)
    assert memory.view_ == files.view_ and memory.paths_ == [f"<image {i}>" for i in range(len(paths))]
    np.testing.assert_array_equal(memory.labels_, files.labels_)
    assert "_memory" not in memory.__dict__  # the caller's images are not kept
    arrays = np.stack([np.asarray(Image.open(p)) for p in paths])  # one (n, h, w, 3) array
    np.testing.assert_array_equal(memory.assign(arrays).clusters, files.labels_)


def test_a_fit_on_images_in_memory_refuses_a_bad_one_before_any_work_and_augment(shape_images, monkeypatch):
    import visclust.engines as engines

    images = [Image.open(p) for p in collect_inputs([shape_images])]
    monkeypatch.setattr(engines, "create_engine", lambda *a, **k: pytest.fail("an engine was made"))
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=3, progress=False)
    with pytest.raises(InputError, match=r"^<image 36>: a float64 array"):
        m.fit(images + [np.zeros((8, 8, 3))])
    with pytest.raises(InputError, match="augmented copies are made from image files"):
        m.set_params(augment=1).fit(images)
