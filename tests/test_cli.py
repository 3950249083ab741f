"""The CLI as a user runs it: real subprocesses, real files."""

import csv
import io
import json
import os
import pickle
import re

import numpy as np
import pytest

from conftest import make_shape_images


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_auto_says_which_number_of_clusters_it_chose(tmp_path, shape_images, cli):
    r = cli("fit", shape_images, "--clusters", "auto", "--k-range", "2:6", "--backbone", "baseline/pixels",
            "--output", tmp_path / "m.vcm")
    assert r.returncode == 0, r.stderr
    assert "--clusters auto chose " in r.stderr and " of 2..6 (" in r.stderr, r.stderr
    # the pipeline chosen without labels (the most central), with the agreement and stability of the others
    number = r"-?[01]\.\d{3}"
    assert re.search(rf"pipeline: chose \w+\+\w+ \(agreement with every candidate {number}, stability {number}; "
                     rf"\w+\+\w+: agreement with every candidate {number}, stability {number}", r.stderr), r.stderr
    r = cli("fit", shape_images, "--clusters", "3", "--backbone", "baseline/pixels", "--method", "kmeans", "--space",
            "pca", "--output", tmp_path / "n.vcm")
    assert r.returncode == 0 and "--clusters auto" not in r.stderr and "pipeline:" not in r.stderr, r.stderr


def test_a_handful_of_images_in_umaps_space_fits_and_a_warning_is_one_line(tmp_path, shape_images, cli):
    """Found using the tool on 8 photos: `--space umap` ended in SciPy's traceback, and a
    warning came out as Python's `file.py:406: UserWarning` plus a source line. (Two images
    are an InputError: tests/test_reduce.py.)"""
    folder = tmp_path / "few"
    folder.mkdir()
    for src in sorted(shape_images.rglob("*.png"))[::5][:8]:
        (folder / f"{src.parent.name}-{src.name}").symlink_to(src)
    r = cli("fit", folder, "--space", "umap", "--method", "hdbscan", "--backbone", "baseline/pixels",
            "--output", tmp_path / "m.vcm", "-q")  # HDBSCAN finds only noise in 8 images: a warning
    assert r.returncode == 0, r.stderr
    assert r.stderr == "visclust fit: warning: the clustering found no cluster (all points are noise); every row is one group\n"


def test_fit_on_duplicated_images_says_how_many_groups_it_found(tmp_path, shape_images, cli):
    # 3 distinct images, 12 copies each: 5 clusters cannot be found, and auto must not claim 6.
    import shutil

    folder = tmp_path / "dups"
    folder.mkdir()
    for i, src in enumerate(sorted(shape_images.rglob("*.png"))[::8][:3]):
        for j in range(12):
            shutil.copy(src, folder / f"{i}-{j}.png")
    r = cli("fit", folder, "--clusters", "5", "--backbone", "baseline/pixels", "--output", tmp_path / "m.vcm")
    assert r.returncode == 0, r.stderr
    assert "fitted 36 images in 3 clusters" in r.stderr
    assert "asked for 5 clusters, the clustering found 3" in r.stderr and "Warning" not in r.stderr, r.stderr
    r = cli("fit", folder, "--clusters", "auto", "--k-range", "2:6", "--backbone", "baseline/pixels",
            "--output", tmp_path / "m.vcm")
    assert r.returncode == 0 and "--clusters auto chose 3 of 2..3" in r.stderr and "Warning" not in r.stderr, r.stderr
    one = next(folder.iterdir())  # and the assignments on stdout (`--assignments -`), as predict writes them
    r = cli("fit", one, "--clusters", "1", "--backbone", "baseline/pixels", "--output", tmp_path / "m.vcm",
            "--assignments", "-", cwd=tmp_path)
    assert r.returncode == 0 and "fitted 1 image in 1 cluster," in r.stderr, r.stderr
    assert r.stdout.splitlines() == ["path,cluster,confidence", f"{one},0,1.000000"] and not (tmp_path / "-").exists()


def test_fit_on_many_images_clusters_a_sample_and_says_so(tmp_path, cli):
    images = make_shape_images(tmp_path / "img", n_per_class=150, size=24)
    out = tmp_path / "fit.csv"
    # 3 clusters: at least 300 rows in the sample, whatever --max-cluster-rows says below that
    r = cli("fit", images, "--clusters", "3", "--backbone", "baseline/pixels", "--max-cluster-rows", "200",
            "--output", tmp_path / "m.vcm", "--assignments", out)
    assert r.returncode == 0, r.stderr
    assert "clustered: chose the pipeline on a random 300 of 450 images (--max-cluster-rows), then clustered all " \
        "of them with it" in r.stderr, r.stderr
    assert len(rows(out)) == 450
    r = cli("evaluate", "--assignments", out, "--labels", "folders", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["acc"] == 1.0, r.stdout + r.stderr
    # the saved model keeps the record: a report made later says it too
    r = cli("report", tmp_path / "m.vcm", "--assignments", out, "--output", tmp_path / "r.html", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "chose the pipeline on a random 300 of 450 images" in (tmp_path / "r.html").read_text()
    r = cli("fit", images, "--clusters", "3", "--backbone", "baseline/pixels", "--max-cluster-rows", "0",
            "--output", tmp_path / "n.vcm")
    assert r.returncode == 0 and "clustered:" not in r.stderr, r.stderr
    r = cli("fit", images, "--clusters", "3", "--max-cluster-rows", "-5", "--output", tmp_path / "o.vcm")
    assert r.returncode != 0 and "--max-cluster-rows must be a number of images, or 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.vcm").exists()
    for flag, value in (("--umap-neighbors", "1"), ("--umap", "-2"), ("--pca", "-1")):
        r = cli("fit", images, "--clusters", "3", flag, value, "--output", tmp_path / "o.vcm")
        assert r.returncode == 2 and f"{flag} must be at least" in r.stderr, r.stderr


def test_fit_predict_evaluate_round_trip(tmp_path, shape_images, cli):
    model, fitcsv = tmp_path / "m.vcm", tmp_path / "fit.csv"
    r = cli("fit", shape_images, "--clusters", "3", "--backbone", "baseline/pixels", "--output", model,
            "--assignments", fitcsv, "--quiet")
    assert r.returncode == 0, r.stderr
    fitted = rows(fitcsv)
    assert list(fitted[0]) == ["path", "cluster", "confidence"]
    assert len(fitted) == 36 and all(0.0 <= float(x["confidence"]) <= 1.0 for x in fitted)

    r = cli("evaluate", "--assignments", fitcsv, "--labels", "folders", "--json")
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert scores["acc"] == 1.0 and scores["n"] == 36 and {"nmi", "ari", "purity"} <= set(scores)

    # New images the model has never seen, from the same three kinds.
    new = make_shape_images(tmp_path / "new", n_per_class=5, seed=7)
    out = tmp_path / "new.csv"
    r = cli("predict", model, new, "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(rows(out)) == 15
    r = cli("evaluate", "--assignments", out, "--labels", "folders", "--json")
    assert json.loads(r.stdout)["acc"] == 1.0

    # The saved model reproduces the fitted assignments exactly.
    again = tmp_path / "again.csv"
    assert cli("predict", model, shape_images, "--output", again, "-q").returncode == 0
    assert [(x["path"], x["cluster"], x["confidence"]) for x in rows(again)] == \
           [(x["path"], x["cluster"], x["confidence"]) for x in fitted]

    # Without --output the CSV goes to stdout, the same bytes; with no file to hold it, the
    # list of unreadable images is printed whole, even with --quiet.
    (tmp_path / "bad.png").write_text("not an image")
    r = cli("predict", model, shape_images, tmp_path / "bad.png", "-q")
    assert r.returncode == 1 and r.stdout == again.read_text(), r.stderr
    assert r.stderr == f"skipped 1 unreadable image(s):\n  {tmp_path / 'bad.png'}: not an image Pillow can decode\n"
    assert not list(tmp_path.glob("*skipped*"))
    # ... and `evaluate --assignments -` reads it back from stdin, as in a pipe
    r = cli("evaluate", "--assignments", "-", "--labels", "folders", "--json", input=r.stdout)
    assert r.returncode == 0 and json.loads(r.stdout)["acc"] == 1.0 and json.loads(r.stdout)["n"] == 36, r.stderr


def test_predict_reject_novel_marks_images_unlike_the_training_images(tmp_path, shape_images, cli):
    from PIL import Image

    model = tmp_path / "m.vcm"
    assert cli("fit", shape_images, "-k", "3", "--backbone", "baseline/pixels", "-o", model, "-q").returncode == 0
    new = make_shape_images(tmp_path / "new", n_per_class=5, seed=7)  # the same three kinds
    odd = tmp_path / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # unlike any training image: coloured noise
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(odd / f"noise{i}.png")
    out = tmp_path / "p.csv"
    r = cli("predict", model, new, odd, "-o", out)
    assert r.returncode == 0 and all(x["cluster"] != "-1" for x in rows(out)), r.stderr
    r = cli("predict", model, new, odd, "-o", out, "--reject-novel")
    assert r.returncode == 0, r.stderr
    got = {x["path"]: x["cluster"] for x in rows(out)}
    assert all(got[str(p)] == "-1" for p in odd.iterdir())
    assert sum(got[str(p)] != "-1" for p in new.rglob("*.png")) >= 13
    assert "fit no cluster (-1)" in r.stderr


def test_inputs_mix_files_dirs_and_list_files(tmp_path, shape_images, cli):
    files = sorted(shape_images.rglob("*.png"))
    listing = tmp_path / "list.txt"
    listing.write_text("# some images\n" + "\n".join(str(p) for p in files[:10]) + "\n")
    out = tmp_path / "a.csv"
    r = cli("fit", listing, files[20], shape_images / "blue_checks", "-k", "2", "--backbone", "baseline/pixels",
            "-o", tmp_path / "m.vcm", "--assignments", out, "-q")
    assert r.returncode == 0, r.stderr
    paths = [x["path"] for x in rows(out)]
    expected = {str(p) for p in files[:10]} | {str(files[20])} | {str(p) for p in (shape_images / "blue_checks").glob("*.png")}
    assert len(paths) == len(set(paths))  # each image once, even when named twice
    assert set(paths) == expected


def test_paths_piped_on_standard_input(tmp_path, shape_images, cli):
    """`find ... | visclust predict M -`: one path per line (relative to the current directory,
    directories expanded) or NUL-separated (`find -print0`, for names with a newline)."""
    model, fitcsv = tmp_path / "m.vcm", tmp_path / "fit.csv"
    files = sorted(shape_images.rglob("*.png"))
    odd = shape_images / "red_disc" / "two\nlines.png"
    odd.write_bytes(files[0].read_bytes())
    lines = "\n".join(os.path.relpath(p, tmp_path) for p in files[:12]) + "\nshapes/green_bars\n"
    r = cli("fit", "-", "-k", "2", "--backbone", "baseline/pixels", "-o", model, "--assignments", fitcsv, "-q",
            cwd=tmp_path, input=lines)
    assert r.returncode == 0, r.stderr
    expected = [os.path.relpath(p, tmp_path) for p in files[:12] + sorted((shape_images / "green_bars").glob("*.png"))]
    assert [x["path"] for x in rows(fitcsv)] == list(dict.fromkeys(expected))
    r = cli("predict", model, "-", "-q", input="\0".join(map(str, [odd, files[1], tmp_path / "missing.png"])))
    assert r.returncode == 1, r.stderr  # the missing file is reported and skipped, as in a list file
    assert [x["path"] for x in csv.DictReader(io.StringIO(r.stdout))] == [str(odd), str(files[1])]
    assert f"{tmp_path / 'missing.png'}: file not found" in r.stderr
    r = cli("predict", model, "-", "-q", input="")
    assert r.returncode == 2 and r.stderr == "visclust predict: error: input '-': standard input listed no paths\n"


def test_evaluate_without_labels_gives_internal_scores(tmp_path, shape_images, cli):
    model, fitcsv = tmp_path / "m.vcm", tmp_path / "fit.csv"
    cli("fit", shape_images, "-k", "3", "--backbone", "baseline/pixels", "-o", model, "--assignments", fitcsv, "-q")
    r = cli("evaluate", "--assignments", fitcsv, "--model", model, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["silhouette"] > 0.2 and s["davies_bouldin"] > 0 and s["n"] == 36


def test_evaluate_scores_the_labelled_images_when_a_labels_csv_names_only_some(tmp_path, shape_images, cli):
    import csv

    fitcsv = tmp_path / "fit.csv"
    cli("fit", shape_images, "-k", "3", "--backbone", "baseline/pixels", "-o", tmp_path / "m.vcm",
        "--assignments", fitcsv, "-q")
    with open(fitcsv, newline="") as f:
        rows = list(csv.DictReader(f))
    labelled = rows[::2]  # every other image labelled, by its folder
    with open(tmp_path / "some.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r["path"], r["path"].replace("\\", "/").split("/")[-2]] for r in labelled)
    r = cli("evaluate", "--assignments", fitcsv, "--labels", tmp_path / "some.csv", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["n"] == len(labelled) and s["n_unlabelled"] == len(rows) - len(labelled)
    whole = json.loads(cli("evaluate", "--assignments", fitcsv, "--labels", "folders", "--json").stdout)
    assert whole["n"] == len(rows) and whole["n_unlabelled"] == 0
    assert f"scored the {len(labelled)} of {len(rows)} images that have a label" in r.stderr
    (tmp_path / "none.csv").write_text("path,label\nelsewhere.png,cat\n")
    r = cli("evaluate", "--assignments", fitcsv, "--labels", tmp_path / "none.csv")
    assert r.returncode == 2 and "none of the 36 images has a label" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_backbones_lists_names_with_sizes(cli):
    r = cli("backbones", "--json")
    assert r.returncode == 0
    entries = {e["name"]: e for e in map(json.loads, r.stdout.splitlines())}
    assert entries["torchvision/resnet50"]["feature_dim"] == 2048
    assert entries["torchvision/vgg16"]["input_size"] == 224
    assert "timm/vit_small_patch14_dinov2.lvd142m" in entries


@pytest.mark.parametrize("args, message", [
    (["fit", "nowhere/", "-o", "m.vcm", "--backbone", "baseline/pixels"], "does not exist"),
    # before the network: with no --weights and no network, the typo is what gets reported
    (["fit", "nowhere/", "-o", "m.vcm"], "input 'nowhere/' does not exist"),
    (["fit", ".", "-o", "m.vcm", "--backbone", "torchvision/resnet5"], "did you mean 'torchvision/resnet50'"),
    (["fit", ".", "-o", "m.vcm", "--backbone", "baseline/pixels", "--method", "kmeens"], "did you mean 'kmeans'"),
    (["fit", ".", "-o", "m.vcm", "--backbone", "baseline/pixels", "-k", "ten"], "positive integer or 'auto'"),
    (["evaluate", "--assignments", "missing.csv", "--labels", "folders"], "does not exist"),
])
def test_bad_input_is_one_line_not_a_traceback(tmp_path, shape_images, cli, args, message):
    r = cli(*args, cwd=shape_images)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_model_file_with_pickle_payload_is_refused_and_not_run(tmp_path, shape_images, cli):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.vcm"
    bad.write_bytes(pickle.dumps(Evil()))
    r = cli("predict", bad, shape_images, "-o", tmp_path / "x.csv")
    assert r.returncode == 2 and "not a visclust model file" in r.stderr
    assert not marker.exists() and not (tmp_path / "x.csv").exists()


def test_demo_runs_offline_and_prints_metrics(cli):
    r = cli("demo", "--quiet", env={"VISCLUST_WEIGHTS": "", "TORCH_HOME": "/nonexistent-torch-home"})
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if "ACC" in l]
    assert len(lines) == 2
    acc = float(lines[1].split("ACC")[1].split()[0])
    assert acc > 0.6  # raw pixels on digits; K-means alone gets about 0.7-0.8


@pytest.mark.slow
def test_pretrained_features_beat_pixels_on_real_photos(tmp_path, cifar_small, mobilenet_weights, cli):
    """The issue's done-criterion in small: real CIFAR-10 JPEGs, the shared MobileNetV2
    weights, a folder the model has not seen."""
    fit_dir, unseen = cifar_small
    results = {}
    for name, extra in (("mobilenet", ["--backbone", "torchvision/mobilenet_v2", "--weights", mobilenet_weights]),
                        ("pixels", ["--backbone", "baseline/pixels"])):
        model, fitcsv, newcsv = tmp_path / f"{name}.vcm", tmp_path / f"{name}.csv", tmp_path / f"{name}-new.csv"
        r = cli("fit", fit_dir, "-k", "4", *extra, "-o", model, "--assignments", fitcsv, "-q")
        assert r.returncode == 0, r.stderr
        r = cli("predict", model, unseen, "-o", newcsv, "-q")
        assert r.returncode == 0, r.stderr
        assert len(rows(newcsv)) == 80  # every unseen image assigned
        scores = [json.loads(cli("evaluate", "--assignments", c, "--labels", "folders", "--json").stdout)["acc"]
                  for c in (fitcsv, newcsv)]
        results[name] = scores
    assert results["mobilenet"][0] > results["pixels"][0] + 0.15
    assert results["mobilenet"][1] > results["pixels"][1] + 0.15
    assert results["mobilenet"][0] > 0.7


def test_the_fit_summary_says_how_many_of_the_models_clusters_got_no_image():
    """With many small clusters the classifier may leave some empty: the summary says so."""
    import numpy as np

    from visclust.cli._common import cluster_summary
    from visclust.io import Assignments

    a = Assignments(["a", "b", "c", "d"], np.array([0, 0, 2, -1]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert cluster_summary(a, 4).startswith("4 images in 2 clusters (2 of the model's 4 got none), 1 fit no cluster")
    assert cluster_summary(a, 2).startswith("4 images in 2 clusters, 1 fit no cluster")
    assert cluster_summary(a).startswith("4 images in 2 clusters, 1 fit no cluster")
    none = Assignments(["a", "b"], np.array([-1, -1]), np.array([0.3, 0.2]))
    assert cluster_summary(none, 4) == "2 images, none in a cluster: all fit no cluster (-1)"
    assert cluster_summary(Assignments(["a"], np.array([-1]), np.array([0.3]))) == \
        "1 image, none in a cluster: it fits no cluster (-1)"
    # predict where every input was skipped said "assigned 0 images in 0 clusters"
    assert cluster_summary(Assignments([], np.zeros(0, int), np.zeros(0))) == "no image: none of the inputs could be read"


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_an_output_that_cannot_be_written_fails_before_the_work(tmp_path, shape_images, cli, command):
    """fit and predict wrote their outputs only at the end: a bad path lost all the work."""
    (tmp_path / "plain").write_text("x")
    bad = tmp_path / "plain" / "out"  # under a file: no folder can be made there
    store = tmp_path / "store"
    if command == "fit":
        args = ["fit", shape_images, "-k", "2", "--backbone", "baseline/pixels", "-o", tmp_path / "m.vcm",
                "--assignments", bad]
    else:
        assert cli("fit", shape_images, "-k", "2", "--backbone", "baseline/pixels", "-o", tmp_path / "m.vcm",
                   "-q").returncode == 0
        args = ["predict", tmp_path / "m.vcm", shape_images, "-o", bad]
    r = cli(*args, "--store", store)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "while writing; check the output path" in r.stderr and str(bad) in r.stderr
    assert not store.exists()  # no feature was computed
