"""Export to one folder per cluster: layout, clashes, reruns, untrusted CSV rows, and the
originals never touched (checked by hashing every file before and after)."""

import csv
import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visclust.exceptions import InputError
from visclust.export import export_clusters, safe_name
from visclust.io import Assignments, write_assignments


def digest_tree(root):
    """{relative path: sha256 of content, or 'link -> target'} for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link -> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def photos(tmp_path):
    """Six files; two pairs share a name in different folders (a clash once in one cluster)."""
    src = tmp_path / "photos"
    files = []
    for folder, name in [("a", "cat.jpg"), ("b", "cat.jpg"), ("a", "dog.jpg"), ("b", "dog.jpg"),
                         ("a", "bird.png"), ("b", "fish.png")]:
        d = src / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(f"{folder}/{name} pixels".encode() * 50)
        files.append(str(d / name))
    return src, files


def assign(files, clusters):
    return Assignments(list(files), np.array(clusters), np.full(len(files), 0.9))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_layout_clashes_and_csv(tmp_path, photos, mode):
    src, files = photos
    before = digest_tree(src)
    out = tmp_path / "sorted"
    res = export_clusters(assign(files, [0, 0, 1, 1, 1, -1]), out, mode=mode)

    assert sorted(os.listdir(out)) == ["0", "1", "export.csv", "unassigned"]
    assert sorted(os.listdir(out / "0")) == ["cat-1.jpg", "cat.jpg"]
    assert sorted(os.listdir(out / "1")) == ["bird.png", "dog-1.jpg", "dog.jpg"]
    assert os.listdir(out / "unassigned") == ["fish.png"]
    assert res.renamed == 2 and not res.missing
    # Each destination holds exactly its own source's bytes.
    rows = read_rows(out / "export.csv")
    assert len(rows) == 6 and list(rows[0]) == ["source", "destination", "cluster"]
    for r in rows:
        dest = out / r["destination"]
        assert dest.read_bytes() == open(r["source"], "rb").read()
        assert dest.is_symlink() == (mode == "symlink")
    assert {r["source"] for r in rows} == set(files)
    assert digest_tree(src) == before


def test_never_overwrites_a_users_file_and_rerun_changes_nothing(tmp_path, photos):
    src, files = photos
    out = tmp_path / "sorted"
    (out / "0").mkdir(parents=True)
    (out / "0" / "cat.jpg").write_bytes(b"my own cat, not from the CSV")
    (out / "notes.txt").write_text("keep me")
    mine = digest_tree(out)

    a = assign(files[:2], [0, 0])
    export_clusters(a, out, mode="copy")
    after_first = digest_tree(out)
    for rel, h in mine.items():
        assert after_first[rel] == h
    assert sorted(os.listdir(out / "0")) == ["cat-1.jpg", "cat-2.jpg", "cat.jpg"]

    res = export_clusters(a, out, mode="copy")
    assert res.reused == 2 and res.renamed == 0
    assert digest_tree(out) == after_first
    assert len(read_rows(out / "export.csv")) == 2


def test_a_foreign_export_csv_is_kept(tmp_path, photos):
    src, files = photos
    out = tmp_path / "sorted"
    out.mkdir()
    (out / "export.csv").write_text("my,own,spreadsheet\n1,2,3\n")
    res = export_clusters(assign(files[:1], [3]), out)
    assert (out / "export.csv").read_text() == "my,own,spreadsheet\n1,2,3\n"
    assert os.path.basename(res.csv_path) == "export-1.csv"
    assert read_rows(res.csv_path)[0]["destination"] == os.path.join("3", "cat.jpg")


def test_hostile_csv_rows_stay_inside_the_folder(tmp_path, photos):
    src, files = photos
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "cat.jpg").write_bytes(b"precious")
    nested = src / "a" / "deep"
    nested.mkdir()
    sneaky = [str(nested / ".." / ".." / ".." / "victim" / "cat.jpg"),  # resolves to the victim itself
              os.path.relpath(files[0]), str(src / "a" / ".."), "/", "../../../../etc/passwd-does-not-exist"]
    out = tmp_path / "sorted"
    outside_before = digest_tree(tmp_path)
    res = export_clusters(assign(sneaky, [0, 0, 0, 0, 0]), out, mode="copy")

    outside_after = {k: v for k, v in digest_tree(tmp_path).items() if not k.startswith("sorted")}
    assert outside_after == outside_before  # nothing written, changed or removed outside DIR
    real_out = os.path.realpath(out)
    for dirpath, _, filenames in os.walk(out):
        for n in filenames:
            assert os.path.realpath(os.path.join(dirpath, n)).startswith(real_out + os.sep)
    assert sorted(os.listdir(out / "0")) == ["cat-1.jpg", "cat.jpg"]
    assert sorted(r for r, _ in res.missing) == sorted(sneaky[2:])


def test_a_cluster_folder_that_is_a_link_is_refused(tmp_path, photos):
    src, files = photos
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "sorted"
    out.mkdir()
    (out / "0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError, match="not a plain folder"):
        export_clusters(assign(files[:1], [0]), out)
    assert os.listdir(elsewhere) == []


def test_bad_arguments(tmp_path, photos):
    src, files = photos
    with pytest.raises(InputError, match="mode must be one of symlink, copy"):
        export_clusters(assign(files, [0] * 6), tmp_path / "o", mode="move")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        export_clusters(assign(files, [0] * 6), tmp_path / "afile")


@pytest.mark.parametrize("name,expected", [("..", "image"), (".", "image"), ("", "image"), ("a/b.jpg", "a_b.jpg"),
                                           ("a\\b.jpg", "a_b.jpg"), (".hidden.png", "hidden.png"), ("x\0y", "x_y")])
def test_safe_name_examples(name, expected):
    assert safe_name(name) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_safe_name_never_leaves_its_folder(name):
    got = safe_name(name)
    root = os.path.join(os.sep, "export", "0")
    assert got and "/" not in got and "\0" not in got and not got.startswith(".")
    assert os.path.dirname(os.path.normpath(os.path.join(root, got))) == root
    assert len(got.encode("utf-8", "surrogatepass")) <= 200


def test_cli_export(tmp_path, photos, cli):
    src, files = photos
    before = digest_tree(src)
    csv_in = tmp_path / "fit.csv"
    write_assignments(csv_in, assign(files + [str(src / "gone.jpg")], [0, 1, 0, 1, 2, 2, 2]))
    r = cli("export", "--assignments", csv_in, "--to", tmp_path / "out", "--mode", "copy")
    assert r.returncode == 1, r.stderr  # finished, but one image was missing
    assert "exported 6 images into 3 folders" in r.stderr and "gone.jpg: not found" in r.stderr
    assert len(read_rows(tmp_path / "out" / "export.csv")) == 6
    assert digest_tree(src) == before

    r = cli("export", "--assignments", tmp_path / "nope.csv", "--to", tmp_path / "out")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_a_refit_exported_into_the_same_folder_is_refused_or_replaced(tmp_path, photos, mode):
    """After a refit the same images have other clusters: exporting them into the earlier
    export's folder would leave each in two cluster folders (it did before 2026-12-06)."""
    src, files = photos
    before = digest_tree(src)
    out = tmp_path / "sorted"
    export_clusters(assign(files, [0, 0, 1, 1, 1, 1]), out, mode=mode)
    (out / "1" / "notes.txt").write_text("mine")  # the user's own file in an old cluster folder
    first = digest_tree(out)

    refit = assign(files, [1, 1, 0, 0, 0, 2])
    with pytest.raises(InputError, match=r"6 of these images are already in another cluster's folder.*--replace"):
        export_clusters(refit, out, mode=mode)
    assert digest_tree(out) == first  # refused before anything was created

    res = export_clusters(refit, out, mode=mode, replace=True)
    assert res.replaced == 6 and res.rows and not res.missing
    where = {}
    for dirpath, _, names in os.walk(out):
        for n in names:
            p = os.path.join(dirpath, n)
            if n not in ("export.csv", "notes.txt"):
                where.setdefault(os.path.realpath(p) if mode == "symlink" else open(p, "rb").read(), []).append(
                    os.path.basename(dirpath))
    assert sorted(map(tuple, where.values())) == [("0",)] * 3 + [("1",)] * 2 + [("2",)]  # each image once
    assert (out / "1" / "notes.txt").read_text() == "mine"
    rows = read_rows(out / "export.csv")
    assert sorted(r["source"] for r in rows) == sorted(files)  # the earlier rows are gone
    assert digest_tree(src) == before
    assert export_clusters(refit, out, mode=mode).reused == 6  # and a rerun is not refused


def test_new_images_join_an_earlier_export_and_changed_copies_are_never_removed(tmp_path, photos):
    src, files = photos
    out = tmp_path / "sorted"
    export_clusters(assign(files[:3], [0, 0, 1]), out, mode="copy")
    export_clusters(assign(files[3:], [0, 1, 1]), out, mode="copy")  # other images (predict): no conflict
    assert len(read_rows(out / "export.csv")) == 6
    (out / "0" / "cat.jpg").write_bytes(b"edited by the user")  # no longer the export's copy
    res = export_clusters(assign(files[:1], [1]), out, mode="copy", replace=True)
    assert res.replaced == 0 and (out / "0" / "cat.jpg").read_bytes() == b"edited by the user"
    assert (out / "1" / "cat.jpg").read_bytes() == open(files[0], "rb").read()


def test_replace_never_follows_an_export_csv_row_out_of_the_folder(tmp_path, photos):
    src, files = photos
    out = tmp_path / "sorted"
    export_clusters(assign(files[:1], [0]), out)
    victim = tmp_path / "victim.jpg"
    victim.symlink_to(files[0])  # would pass the "still a link to its source" test
    with open(out / "export.csv", "a", newline="") as f:
        csv.writer(f).writerows([[files[0], "../victim.jpg", "0"], [files[0], "0/../../victim.jpg", "0"],
                                 [files[0], "9/victim.jpg", "9"]])
    (out / "9").symlink_to(tmp_path, target_is_directory=True)  # a folder of the export that leads out
    res = export_clusters(assign(files[:1], [1]), out, replace=True)
    assert victim.is_symlink() and res.replaced == 1  # only the export's own 0/cat.jpg


def test_cli_export_after_a_refit(tmp_path, photos, cli):
    src, files = photos
    for name, clusters in [("fit.csv", [0, 0, 1, 1, 2, 2]), ("refit.csv", [2, 2, 0, 0, 1, 1])]:
        write_assignments(tmp_path / name, assign(files, clusters))
    assert cli("export", "--assignments", tmp_path / "fit.csv", "--to", tmp_path / "out").returncode == 0
    r = cli("export", "--assignments", tmp_path / "refit.csv", "--to", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--replace" in r.stderr, r.stderr
    r = cli("export", "--assignments", tmp_path / "refit.csv", "--to", tmp_path / "out", "--replace")
    assert r.returncode == 0 and "6 removed from the earlier export's other cluster folders" in r.stderr, r.stderr
    assert sum(len(fs) for _, _, fs in os.walk(tmp_path / "out")) == 7  # 6 links and export.csv
