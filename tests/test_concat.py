"""Features of several backbones, concatenated: the API, the model file and the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from visclust.exceptions import InputError
from visclust.features import FeatureResult, concat_features
from visclust.model import ImageClusterer, view_wins

TWO = ["baseline/pixels", "torchvision/mobilenet_v2"]


def test_rows_every_backbone_read_each_block_unit_length():
    a = FeatureResult(np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], np.float32), ["x", "y", "z"],
                      [("w", "w: truncated")])
    b = FeatureResult(np.array([[0.0, 0.0, 5.0], [1.0, 1.0, 1.0]], np.float16), ["z", "x"], [("y", "y: bad crop")])
    r = concat_features([a, b])
    assert r.paths == ["x", "z"]  # the first result's order; y was skipped by the second backbone
    assert sorted(r.skipped) == [("w", "w: truncated"), ("y", "y: bad crop")]
    assert r.features.dtype == np.float32 and r.features.shape == (2, 5)
    np.testing.assert_allclose(r.features[0], [0.6, 0.8, *(np.ones(3) / np.sqrt(3))], rtol=1e-6)
    np.testing.assert_allclose(r.features[1], [1.0, 0.0, 0.0, 0.0, 1.0], rtol=1e-6)
    # each block has unit length, so a 2-d and a 3-d backbone weigh the same
    np.testing.assert_allclose(np.linalg.norm(r.features[:, :2], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(r.features[:, 2:], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("backbone, weights, message", [
    (["torchvision/resnet50", "torchvision/mobilenet_v2"], ["a.safetensors"], "1 weights file(s) for 2 backbone(s)"),
    (TWO, ["a.pt", "b.pt", "c.pt"], "3 weights file(s) for 2 backbone(s)"),
    (["baseline/pixels", "baseline/pixels"], None, "same backbone twice"),
    ([], None, "backbone must be"),
])
def test_backbone_lists_are_checked(backbone, weights, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImageClusterer(backbone=backbone, weights=weights).backbone_specs()


def test_one_weights_file_goes_to_the_one_backbone_that_takes_weights():
    assert ImageClusterer(backbone=TWO, weights="w.pt").backbone_specs() == [(TWO[0], None), (TWO[1], "w.pt")]
    assert ImageClusterer(backbone=TWO, weights=["-", "w.pt"]).backbone_specs() == [(TWO[0], None), (TWO[1], "w.pt")]


def test_concatenated_model_round_trips_through_its_file(tmp_path, shape_images):
    store = tmp_path / "store"
    m = ImageClusterer(backbone=TWO, pretrained=False, n_clusters=3, store=str(store), engine="torch",
                       num_workers=0, weights=[None, "-"], pixels="auto")
    m.fit([shape_images])
    pixels = ImageClusterer(backbone="baseline/pixels").get_backbone().feature_dim
    assert m.feature_clusterer_.n_features_in_ == pixels + 1280
    assert [c.name for c in m.backbone_configs_] == TWO and m.backbone_config_.name == TWO[0]
    assert m.view_scores_ == {}  # pixels are already one of the backbones
    assert len(list(store.glob("*/config.json"))) == 2  # each backbone's rows in its own part of the store
    m.save(tmp_path / "m.vcm")
    back = ImageClusterer.load(tmp_path / "m.vcm")
    assert back.backbone == TWO and [c.to_dict() for c in back.backbone_configs_] == \
           [c.to_dict() for c in m.backbone_configs_]
    a = back.assign([shape_images])
    assert a.paths == m.paths_
    np.testing.assert_array_equal(a.clusters, m.labels_)
    np.testing.assert_allclose(a.confidence, m.confidence_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone, pixels, wins", [
    (0.984, 0.992, True),   # disagreement halved (MNIST, 2026-12-03)
    (0.50, 0.51, False),    # 2% of the disagreement: noise
    (0.80, 0.85, True),     # exactly a quarter
    (0.80, 0.84, False),
    (0.86, 0.69, False),    # pixels worse (CIFAR-10)
    (1.0, 1.0, False),      # a tie keeps the smaller model
])
def test_pixels_view_must_remove_a_quarter_of_the_disagreement(backbone, pixels, wins):
    assert view_wins(backbone, pixels) is wins
    assert view_wins(backbone, pixels, gain=0.0) is (pixels > backbone)  # a view that costs nothing more


@pytest.mark.parametrize("pixels", ["auto", True, False])
def test_pixels_view_is_kept_only_as_chosen_and_predict_computes_it(tmp_path, shape_images, pixels):
    m = ImageClusterer(backbone="torchvision/mobilenet_v2", pretrained=False, n_clusters=3, engine="torch",
                       num_workers=0, pixels=pixels, input_size="backbone").fit([shape_images])
    names = [c.name for c in m.backbone_configs_]
    if pixels == "auto":
        s = m.view_scores_
        assert set(s) == {"backbone", "backbone+pixels"} and all(0.0 <= v <= 1.0 for v in s.values())
        with_pixels = view_wins(s["backbone"], s["backbone+pixels"])
        assert max(m.feature_clusterer_.pipeline_scores_.values()) == \
            s["backbone+pixels" if with_pixels else "backbone"]  # a view's score: its most stable pipeline's
    else:
        assert m.view_scores_ == {}
        with_pixels = pixels
    assert names == ["torchvision/mobilenet_v2"] + ["baseline/pixels"] * with_pixels
    assert m.feature_clusterer_.n_features_in_ == 1280 + 3072 * with_pixels
    m.save(tmp_path / "m.vcm")
    back = ImageClusterer.load(tmp_path / "m.vcm")
    assert [c.name for c in back.backbone_configs_] == names
    np.testing.assert_array_equal(back.assign([shape_images]).clusters, m.labels_)


def _rows(path):
    with open(path, newline="") as f:
        return [(r["path"], r["cluster"], r["confidence"]) for r in csv.DictReader(f)]


def test_cli_fit_and_predict_with_two_backbones(tmp_path, shape_images, cli):
    model, fitcsv, again = tmp_path / "m.vcm", tmp_path / "fit.csv", tmp_path / "again.csv"
    common = ["--workers", "0", "--engine", "torch", "-q"]
    r = cli("fit", shape_images, "-k", "3", "--backbone", TWO[0], "--backbone", TWO[1], "--random-weights",
            "-o", model, "--assignments", fitcsv, *common)
    assert r.returncode == 0, r.stderr
    r = cli("predict", model, shape_images, "-o", again, *common)
    assert r.returncode == 0, r.stderr
    assert _rows(again) == _rows(fitcsv) and len(_rows(fitcsv)) == 36
    r = cli("fit", shape_images, "-k", "3", "--backbone", TWO[0], "--backbone", TWO[1], "--weights", "a.pt",
            "--weights", "b.pt", "--weights", "c.pt", "-o", model, *common)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "3 weights file(s) for 2 backbone(s)" in r.stderr


def test_a_second_fit_starts_from_the_named_backbones_not_the_first_fits_choice(shape_images):
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=3, engine="torch", num_workers=0)
    m.set_params(backbone=TWO, pretrained=False, pixels=False).fit([shape_images])
    assert len(m.backbone_configs_) == 2
    m.set_params(backbone="baseline/pixels").fit([shape_images])
    assert [c.name for c in m.backbone_configs_] == ["baseline/pixels"]
    assert m.feature_clusterer_.n_features_in_ == 3072
