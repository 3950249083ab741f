"""Augmented copies for the classifier step: the copies themselves, the SVM that learns from
them, and the option through ``FeatureClusterer``, ``ImageClusterer`` and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visclust.augment
from visclust.augment import _crop_box, augment_image, write_copies
from visclust.classify import PseudoLabelClassifier
from visclust.evaluate import hungarian_accuracy
from visclust.exceptions import InputError
from visclust.model import FeatureClusterer, ImageClusterer

FAST = dict(method="kmeans", space="pca", n_init=2)


def _photo(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_copy_keeps_the_size_and_is_drawn_again_from_the_same_seed():
    img = _photo()
    a = augment_image(img, np.random.default_rng([0, 1, 2]))
    b = augment_image(img, np.random.default_rng([0, 1, 2]))
    c = augment_image(img, np.random.default_rng([0, 1, 3]))
    assert a.size == img.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(img))


@pytest.mark.parametrize("w,h", [(1, 1), (1, 50), (50, 1), (3, 7), (640, 480)])
def test_crop_boxes_stay_inside_the_image(w, h):
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, ch, cw = _crop_box(w, h, rng)
        assert 0 <= top and 0 <= left and ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w


def test_copies_are_written_in_order_unreadable_ones_are_none_and_large_ones_reduced(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for i, (w, h) in enumerate([(32, 32), (900, 600)]):
        p = src / f"{i}.png"
        _photo(w, h, i).save(p)
        paths.append(str(p))
    bad = src / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    paths.insert(1, str(bad))
    out = write_copies(paths, tmp_path / "copies", view=2, seed=5, short_side=100)
    assert out[1] is None
    assert [Image.open(q).size for q in (out[0], out[2])] == [(32, 32), (150, 100)]
    assert all(str(tmp_path / "copies" / "2") in q for q in (out[0], out[2]))


def test_copies_written_by_worker_processes_or_in_parts_are_the_same_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for i in range(visclust.augment.PARALLEL_MIN_IMAGES + 3):  # enough to start the workers
        p = src / f"{i}.png"
        _photo(12 + i % 5, 10 + i % 7, i).save(p)
        paths.append(str(p))
    paths[7] = str(src / "gone.png")
    one = write_copies(paths, tmp_path / "one", view=1, seed=3, workers=0)
    two = write_copies(paths, tmp_path / "two", view=1, seed=3, workers=2)
    k = 100
    parts = (write_copies(paths[:k], tmp_path / "parts", view=1, seed=3, workers=0)
             + write_copies(paths[k:], tmp_path / "parts", view=1, seed=3, workers=2, start=k))
    assert one[7] is None and two[7] is None and parts[7] is None
    for a, b, c in zip(one, two, parts):
        if a is not None:
            assert Path(a).name == Path(b).name == Path(c).name
            assert Path(a).read_bytes() == Path(b).read_bytes() == Path(c).read_bytes()
    with pytest.raises(InputError, match="workers"):
        write_copies(paths[:1], tmp_path / "x", view=0, workers=-1)


def _nuisance_problem(n=600, seed=0):
    """Two classes told apart by feature 0 (the content). The start labels also follow
    feature 1 (a nuisance, like colour): a fifth of the rows with a large nuisance value are
    in the wrong group, as a clustering misled by colour puts them. The copies redraw the
    nuisance and keep the content, as colour jitter does to a photo."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    content = 3.0 * t + rng.normal(0, 0.6, n)
    nuisance = rng.normal(0, 1, n)
    X = np.stack([content, 2.5 * nuisance], 1).astype(np.float32)
    start = t.copy()
    start[(nuisance > 0.85)] = 1  # misled: a strong nuisance looks like class 1
    views = []
    for _ in range(3):
        v = X.copy()
        v[:, 1] = 2.5 * rng.normal(0, 1, n)
        views.append(v)
    return X, t, start, views


def test_the_svm_trained_with_copies_corrects_what_the_nuisance_misled():
    X, t, start, views = _nuisance_problem()
    before = hungarian_accuracy(t, start)
    plain = PseudoLabelClassifier(kind="svm").fit(X, start)
    with_copies = PseudoLabelClassifier(kind="svm").fit(X, start, views=views)
    acc_plain = hungarian_accuracy(t, plain.classes_[plain.predict_with_confidence(X)[0]])
    acc_copies = hungarian_accuracy(t, with_copies.classes_[with_copies.predict_with_confidence(X, views)[0]])
    # the plain SVM learns the nuisance from the labels; the copies teach it the nuisance says nothing
    assert acc_plain < before + 0.03
    assert acc_copies > before + 0.08 and acc_copies > 0.95
    # no self-training rounds: the copies in the training set alone remove the nuisance, and
    # rows are assigned from their own features
    once = PseudoLabelClassifier(kind="svm", self_training=0).fit(X, start, views=views)
    plain_once = PseudoLabelClassifier(kind="svm", self_training=0).fit(X, start)
    assert abs(once.coef_[1, 1]) < 0.2 * abs(plain_once.coef_[1, 1])
    assert hungarian_accuracy(t, once.classes_[once.predict_with_confidence(X)[0]]) > before + 0.05
    # the training rows' labels average the decision values over each row and its copies
    noisy = [X + np.random.default_rng(i).normal(0, 2, X.shape).astype(np.float32) for i in (1, 2)]
    mean = sum(with_copies.decision_function(a) for a in [X, *noisy]) / 3
    assert (mean.argmax(1) != with_copies.decision_function(X).argmax(1)).any()  # so the check below can fail
    assert np.array_equal(with_copies.predict_with_confidence(X, noisy)[0], mean.argmax(1))
    assert np.array_equal(with_copies.predict_proba(X, noisy).argmax(1), mean.argmax(1))
    # new rows are assigned from their own features, calibrated for that
    p = with_copies.predict_proba(X)
    assert np.allclose(p.sum(1), 1) and with_copies.temperature_ > 0


def test_views_must_have_the_shape_of_x():
    X, _, start, views = _nuisance_problem(100)
    with pytest.raises(InputError, match="shape of X"):
        PseudoLabelClassifier(kind="svm").fit(X, start, views=[views[0][:50]])


def test_the_network_with_copies_corrects_what_the_nuisance_misled():
    """kind='auto' with copies trains the network, on every member and its copies."""
    X, t, start, views = _nuisance_problem()
    before = hungarian_accuracy(t, start)
    net = PseudoLabelClassifier().fit(X, start, views=views)
    assert net.kind_ == "mlp" and net.copies_kept_ > 0.8  # the redrawn nuisance stays within the data's range
    assert hungarian_accuracy(t, net.classes_[net.predict_with_confidence(X)[0]]) > before + 0.08
    alone = PseudoLabelClassifier(kind="mlp").fit(X, start)  # without copies it learns the nuisance too
    assert hungarian_accuracy(t, alone.classes_[alone.predict_with_confidence(X)[0]]) < before + 0.03


def test_the_network_follows_clusters_a_linear_rule_cannot():
    """Two rings: the SVM cannot reproduce them, the network does (UMAP's clusters are often
    of this kind in the PCA space the classifier works in)."""
    from sklearn.datasets import make_circles

    X, y = make_circles(600, factor=0.4, noise=0.03, random_state=0)
    X = X.astype(np.float32)
    net = PseudoLabelClassifier(kind="mlp").fit(X, y)
    svm = PseudoLabelClassifier(kind="svm").fit(X, y)
    assert hungarian_accuracy(y, net.predict(X)) > 0.97
    assert hungarian_accuracy(y, svm.predict(X)) < 0.8
    p = net.predict_proba(X)
    assert np.allclose(p.sum(1), 1) and net.agreement_["mlp"] > 0.95 and net.temperature_ > 0


def test_the_network_trains_fewer_epochs_on_large_inputs(monkeypatch):
    """Its training time stops growing with the rows: at most MLP_MAX_STEPS batches, one epoch at least."""
    import visclust.classify as classify

    X, t, start, _ = _nuisance_problem(600)  # 3 batches of 256 per epoch
    assert PseudoLabelClassifier(kind="mlp", self_training=0).fit(X, start).n_iter_ == classify.MLP_EPOCHS
    monkeypatch.setattr(classify, "MLP_MAX_STEPS", 10)
    net = PseudoLabelClassifier(kind="mlp", self_training=0).fit(X, start)
    assert net.n_iter_ == 3 and hungarian_accuracy(start, net.predict(X)) > 0.6  # trained, if briefly
    monkeypatch.setattr(classify, "MLP_MAX_STEPS", 1)
    assert PseudoLabelClassifier(kind="mlp", self_training=0).fit(X, start).n_iter_ == 1


def test_copies_unlike_any_image_of_the_collection_are_left_out():
    from visclust.classify import plausible_copies

    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (400, 5)).astype(np.float32)
    near = X + rng.normal(0, 0.05, X.shape).astype(np.float32)
    far = near.copy()
    far[::2] += 8.0  # every other copy lands where no image of the collection is
    keep_near, keep_far = plausible_copies(X, [near, far])
    assert keep_near.mean() > 0.85
    assert not keep_far[::2].any() and keep_far[1::2].mean() > 0.85
    # a sample of the originals as the reference gives the same answer
    sampled = plausible_copies(X, [far], max_reference=200)[0]
    assert not sampled[::2].any() and sampled[1::2].mean() > 0.8
    # the network trains on the kept copies only, and its rows average over those only
    start = (X[:, 0] > 0).astype(np.int64)
    net = PseudoLabelClassifier(kind="mlp").fit(X, start, views=[far])
    assert abs(net.copies_kept_ - keep_far.mean()) < 1e-9
    assert np.array_equal(net.copies_keep_[0], keep_far)


def test_refit_classifier_keeps_the_clustering_and_uses_the_network_or_the_svm():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(300, centers=3, n_features=8, random_state=0)
    X = X.astype(np.float32)
    fc = FeatureClusterer(3, classifier="auto", **FAST).fit(X)
    clusters = fc.cluster_labels_.copy()
    rng = np.random.default_rng(0)
    views = [X + rng.normal(0, 0.3, X.shape).astype(np.float32) for _ in range(2)]
    fc.refit_classifier(X, views)
    assert np.array_equal(fc.cluster_labels_, clusters)
    assert fc.classifier_.kind_ == "mlp"
    assert hungarian_accuracy(y, fc.labels_) == 1.0 and len(fc.confidence_) == len(X)
    assert np.array_equal(fc.predict(X), fc.labels_)
    fc.set_params(classifier="svm").refit_classifier(X, views)
    assert fc.classifier_.kind_ == "svm" and hungarian_accuracy(y, fc.labels_) == 1.0
    with pytest.raises(InputError, match="rows of the last fit"):
        fc.refit_classifier(X[:10], [v[:10] for v in views])
    with pytest.raises(InputError, match="classifier='knn'"):
        FeatureClusterer(3, classifier="knn", **FAST).fit(X).refit_classifier(X, views)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_augment_must_be_a_whole_number(shape_images, bad):
    with pytest.raises(InputError, match="augment"):
        ImageClusterer(backbone="baseline/pixels", n_clusters=3, augment=bad, progress=False).fit([str(shape_images)])


def test_augment_with_the_vote_is_refused_before_any_work(shape_images, monkeypatch):
    import visclust.features

    def no_extraction(*a, **k):
        raise AssertionError("extracted before refusing")

    monkeypatch.setattr(visclust.features, "extract_features", no_extraction)
    with pytest.raises(InputError, match="classifier='knn'"):
        ImageClusterer(backbone="baseline/pixels", n_clusters=3, augment=1, progress=False,
                       clusterer=FeatureClusterer(classifier="knn")).fit([str(shape_images)])


def test_image_clusterer_with_copies_through_the_real_cli(shape_images, cli, tmp_path):
    """The whole path: copies written, sent through the backbone, the SVM retrained; the
    model file predicts as usual and the temporary copies are gone."""
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/visclust-copies-*"))
    model = tmp_path / "m.vcm"
    r = cli("fit", str(shape_images), "--backbone", "baseline/pixels", "--clusters", "3", "--augment", "2",
            "--method", "kmeans", "--space", "pca", "-o", str(model), "--assignments", str(tmp_path / "a.csv"))
    assert r.returncode == 0, r.stderr
    assert "classifier: network (" in r.stderr and "of the augmented copies kept" in r.stderr
    assert set(glob.glob(f"{tempfile.gettempdir()}/visclust-copies-*")) == before
    from visclust.io import labels_from_folders, read_assignments

    a = read_assignments(str(tmp_path / "a.csv"))
    assert len(a.paths) == 36
    assert hungarian_accuracy(labels_from_folders(a.paths), a.clusters) >= 0.9
    r = cli("predict", str(model), str(shape_images), "--output", str(tmp_path / "p.csv"))
    assert r.returncode == 0, r.stderr
    from visclust.artifact import load_model
    from visclust.classify import describe_classifier

    clf = load_model(model).feature_clusterer_.classifier_  # the fit's record comes back from the file
    line = describe_classifier(clf)
    assert clf.copies_kept_ is not None and "of the augmented copies kept; held-out agreement with the clustering network" in line
    r = cli("report", str(model), "--assignments", str(tmp_path / "a.csv"), "--output", str(tmp_path / "r.html"),
            "--workers", "0", "--map", "pca")
    assert r.returncode == 0, r.stderr
    assert line.split(": ", 1)[1] in (tmp_path / "r.html").read_text(encoding="utf-8")
    bad = cli("fit", str(shape_images), "--backbone", "baseline/pixels", "--clusters", "3", "--augment", "-2",
              "-o", str(tmp_path / "x.vcm"))
    assert bad.returncode == 2 and "augment" in bad.stderr and "Traceback" not in bad.stderr


def test_a_copy_that_cannot_be_made_takes_its_originals_features(shape_images, monkeypatch):
    import visclust.augment
    from visclust.backbones import create_backbone
    from visclust.io import collect_inputs

    paths = collect_inputs([str(shape_images)])[:4]
    real = visclust.augment.write_copies

    def lose_the_second(paths, directory, view, **kw):
        out = real(paths, directory, view, **kw)
        return [None if i == 1 else q for i, q in enumerate(out)]

    monkeypatch.setattr(visclust.augment, "write_copies", lose_the_second)
    originals = np.arange(4 * 3072, dtype=np.float32).reshape(4, 3072)
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=2, progress=False, num_workers=0)
    (feats,) = m._copies_features([create_backbone("baseline/pixels")], paths, originals, 1)
    assert np.array_equal(feats[1], originals[1])
    assert not np.array_equal(feats[0], originals[0]) and np.isfinite(feats).all()


def test_copies_are_made_in_parts_with_the_same_features(shape_images, monkeypatch):
    """In parts, the temporary folder holds one part's copies at a time, and the features are
    those of the whole collection made at once."""
    import visclust.augment
    import visclust.model
    from visclust.backbones import create_backbone
    from visclust.io import collect_inputs

    paths = collect_inputs([str(shape_images)])[:7]
    bbs = [create_backbone("baseline/pixels")]
    originals = np.zeros((7, 3072), np.float32)
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=2, progress=False, num_workers=0)
    whole = m._copies_features(bbs, paths, originals, 2)
    real, seen, writers = visclust.augment.write_copies, [], []

    def count_then_write(paths, directory, view, **kw):
        seen.append(sum(len(files) for _, _, files in os.walk(directory)))  # copies still on disk
        writers.append(kw["workers"])
        return real(paths, directory, view, **kw)

    monkeypatch.setattr(visclust.augment, "write_copies", count_then_write)
    monkeypatch.setattr(visclust.model, "COPY_CHUNK_IMAGES", 3)
    parts = m._copies_features(bbs, paths, originals, 2)
    assert seen == [0] * 6  # 2 copies x 3 parts (3 + 3 + 1 images), each part deleted before the next
    assert writers == [0] * 6  # num_workers=0: no process is started to write them either
    assert all(np.array_equal(a, b) for a, b in zip(whole, parts))
    assert not np.array_equal(whole[0], whole[1])


def test_with_progress_on_each_bar_says_which_copy_it_is(shape_images, capsys):
    """The copies' bars are labelled, so a user does not see a second, unexplained extraction."""
    from visclust.backbones import create_backbone
    from visclust.io import collect_inputs

    paths = collect_inputs([str(shape_images)])[:3]
    m = ImageClusterer(backbone="baseline/pixels", n_clusters=2, progress=True, num_workers=0)
    m._copies_features([create_backbone("baseline/pixels")], paths, np.zeros((3, 3072), np.float32), 2)
    err = capsys.readouterr().err
    for view in (1, 2):
        assert f"augmented copy {view}/2: writing" in err
        assert f"augmented copy {view}/2: baseline/pixels" in err


def test_the_fit_summary_says_what_assigns_the_images():
    from sklearn.datasets import make_circles

    from visclust.classify import describe_classifier

    X, y = make_circles(600, factor=0.4, noise=0.03, random_state=0)
    X = X.astype(np.float32)
    svm = describe_classifier(PseudoLabelClassifier(kind="svm").fit(X, y))
    assert svm.startswith("classifier: linear SVM (held-out agreement with the clustering SVM 0.")
    auto = PseudoLabelClassifier().fit(X, y)  # rings: the vote reproduces them, the SVM cannot
    line = describe_classifier(auto)
    assert auto.kind_ == "knn"
    assert line.startswith("classifier: vote of the nearest training images (held-out agreement with the clustering vote ")
    assert ", SVM 0." in line
    assert describe_classifier(None) is None
    assert auto.copies_kept_ is None and PseudoLabelClassifier(kind="mlp").fit(X, y).copies_kept_ is None  # no copies
    assert "copies" not in describe_classifier(PseudoLabelClassifier(kind="mlp").fit(X, y))
