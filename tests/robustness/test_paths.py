"""Paths read from CSVs are data: ``export`` never writes outside its target folder, whatever
the paths (``..``, absolute, non-UTF-8) or links already in that folder."""

from __future__ import annotations

import os

import numpy as np
import pytest

from robust_cases import photo

from visclust.cli import main
from visclust.exceptions import InputError
from visclust.export import export_clusters
from visclust.io import Assignments, read_assignments, write_assignments


def snapshot(root) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed) with what identifies its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else None)
    return out


@pytest.fixture
def world(tmp_path):
    """``tmp_path/outside`` holds files export must never touch; ``tmp_path/job`` is the work dir."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    for name in ("victim.png", "sub/victim.png", "passwd"):
        photo((16, 16)).save(outside / name, "PNG")
    job = tmp_path / "job"
    (job / "imgs").mkdir(parents=True)
    for name in ("a.png", "b.png", "..png", "...png"):
        photo((16, 16)).save(job / "imgs" / name, "PNG")
    weird = os.fsdecode(b"caf\xe9.png")
    photo((16, 16)).save(os.path.join(os.fsencode(job / "imgs"), os.fsencode(weird)), "PNG")
    return tmp_path, outside, job, weird


def hostile_assignments(job, outside, weird) -> Assignments:
    paths = [
        str(job / "imgs" / "a.png"),
        str(job / "imgs" / ".." / ".." / "outside" / "victim.png"),  # a real file reached through '..'
        str(outside / "sub" / "victim.png"),  # absolute
        "imgs/../imgs/b.png",  # relative with '..'
        str(job / "imgs" / "..png"),
        str(job / "imgs" / "...png"),
        os.path.join(str(job / "imgs"), weird),
        "../../../../../../../../../../../../../../../../etc/passwd",  # resolves to /etc/passwd
        str(job / "imgs" / ".."),  # a directory: its name would be '..'
    ]
    clusters = np.array([0, 1, 1, 0, 2, 2, -1, 1, 0])
    return Assignments(paths, clusters, np.ones(len(paths)))


def test_export_never_writes_outside_its_folder(world, monkeypatch):
    tmp_path, outside, job, weird = world
    monkeypatch.chdir(job)
    before_outside = snapshot(outside)
    before_imgs = snapshot(job / "imgs")
    result = export_clusters(hostile_assignments(job, outside, weird), job / "sorted", mode="copy")

    assert snapshot(outside) == before_outside and snapshot(job / "imgs") == before_imgs
    created = set(snapshot(job / "sorted"))
    assert all(p.startswith(str(job / "sorted") + os.sep) for p in created)
    for _, dest, _ in result.rows:
        assert not os.path.isabs(dest) and ".." not in dest.split(os.sep)
        assert os.path.realpath(job / "sorted" / dest).startswith(str(job / "sorted") + os.sep)
    # The files reached through '..' or an absolute path are exported *into* the folder.
    names = sorted(os.path.basename(d) for _, d, _ in result.rows)
    assert names.count("victim.png") + names.count("victim-1.png") == 2
    assert any(os.fsencode(n) == b"caf\xe9.png" for n in names)  # non-UTF-8 name kept, byte for byte
    # '../../..../etc/passwd' is only ever a source: read (if it exists), copied in, never written.
    passwd = "../../../../../../../../../../../../../../../../etc/passwd"
    assert [s for s, _ in result.missing] == [str(job / "imgs" / "..")] + ([] if os.path.isfile(passwd) else [passwd])


def test_export_refuses_a_cluster_folder_that_is_a_link_out(world):
    tmp_path, outside, job, weird = world
    (job / "sorted").mkdir()
    os.symlink(outside, job / "sorted" / "0")  # planted: '0' is the first cluster's folder
    before = snapshot(outside)
    with pytest.raises(InputError, match="not a plain folder"):
        export_clusters(hostile_assignments(job, outside, weird), job / "sorted", mode="copy")
    assert snapshot(outside) == before


def test_export_cli_with_hostile_csv(world, monkeypatch, capsys):
    tmp_path, outside, job, weird = world
    monkeypatch.chdir(job)
    write_assignments(job / "hostile.csv", hostile_assignments(job, outside, weird))
    assert read_assignments(job / "hostile.csv").paths[6] == os.path.join(str(job / "imgs"), weird)
    before = snapshot(outside)
    rc = main(["export", "--assignments", "hostile.csv", "--to", "out", "--mode", "symlink"])
    assert rc == 1, capsys.readouterr().err  # some rows name no image: partial success
    assert snapshot(outside) == before
    for p in snapshot(job / "out"):
        assert p.startswith(str(job / "out") + os.sep)
    # Symlinks point at the originals (that is their job) but live inside the folder.
    assert all(os.path.isabs(os.readlink(p)) for p in snapshot(job / "out") if os.path.islink(p))


def test_cluster_values_are_numbers_not_paths(tmp_path):
    (tmp_path / "a.csv").write_text("path,cluster,confidence\nx.png,../../evil,1.0\n")
    with pytest.raises(InputError, match="must be an integer"):
        read_assignments(tmp_path / "a.csv")
