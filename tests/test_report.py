"""The HTML report: what it contains, that it is self-contained and escapes untrusted
paths, and (in a real headless Chromium) that it loads without errors, decodes every
thumbnail and draws the map."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_shape_images

import visclust
from visclust.exceptions import InputError, LabelsError
from visclust.io import Assignments
from visclust.report import ReportOptions, map_embedding, report_model, typicality, write_report
from visclust.select import other_levels

HOSTILE = "<img src=x onerror=alert(1)>&\"'.png"
FAST = dict(map_method="pca")
# No PCA/UMAP search in the fixture's model: the report, not the clustering, is under test.
QUICK_MODEL = dict(backbone="baseline/pixels", n_clusters=3, progress=False, num_workers=0,
                   clusterer=visclust.FeatureClusterer(method="kmeans", space="pca", n_components=None,
                                                       umap_components=None))


def map_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    return html[start:html.index("</section>", start)]


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory):
    """A real model (pixel baseline) on 3 kinds of shapes, one image with a hostile file name
    and one unreadable file, reported with folder labels."""
    root = tmp_path_factory.mktemp("report")
    shapes = make_shape_images(root / "shapes")
    # A red disc of its own (other noise), so its point on the map is not another image's.
    other = make_shape_images(root / "other", n_per_class=1, seed=5)
    shutil.copy(other / "red_disc" / "000.png", shapes / "red_disc" / HOSTILE)
    (shapes / "green_bars" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = visclust.ImageClusterer(**QUICK_MODEL)
    model.fit([str(shapes)])
    out = root / "report.html"
    stats = report_model(model, model.training_assignments(), out, labels="folders",
                         options=ReportOptions(typical=5, atypical=3, **FAST))
    return out, stats, shapes


def test_report_contents(shapes_report):
    out, stats, shapes = shapes_report
    html = out.read_text(encoding="utf-8")
    assert stats.size_bytes == out.stat().st_size
    assert (stats.n_images, stats.n_clusters, stats.n_map_points, stats.n_map_previews) == (37, 3, 37, 37)
    # Per cluster 5 typical + 3 least typical; then every fitted image among the 48 outliers.
    assert stats.n_thumbnails == 3 * (5 + 3) + 37 == html.count('<figure class="th">')
    for k in range(3):
        part = section(html, f"cluster-{k}")
        assert part.count("<img ") == 8 and "Most typical" in part and "Least typical" in part
    # Labels: the scores and a confusion matrix; the shapes are separated perfectly.
    assert re.search(r"<b>1\.000</b><span>ACC</span>", html)
    assert 'alt="confusion matrix"' in html
    # The unreadable image is listed with its reason.
    skipped = html[html.index("Skipped images (1)"):]
    assert "broken.png" in skipped and "not an image" in skipped.split("</table>")[0].lower()


def test_report_is_self_contained(shapes_report):
    html = shapes_report[0].read_text(encoding="utf-8")
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert "<link" not in html and "<script src" not in html and "@import" not in html
    # The only URLs are file:// links to the user's own originals.
    assert {m.group(1) for m in re.finditer(r"([a-z]+)://", html)} == {"file"}


def test_untrusted_paths_are_escaped(shapes_report):
    out, _, shapes = shapes_report
    html = out.read_text(encoding="utf-8")
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;.png" in html
    # In the map's JSON the path survives exactly, and cannot close its <script>.
    blob = re.search(r'id="map-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in blob and ">" not in blob
    assert str(shapes / "red_disc" / HOSTILE) in map_data(html)["p"]


def test_typical_members_are_nearest_the_centre(tmp_path):
    # One cluster on a line: image i sits at distance |i - 3| from the centre (3).
    paths = []
    for i in range(7):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (20, 20), (30 * i, 0, 0)).save(p)
        paths.append(str(p))
    Z = np.array([[i, 0.0] for i in [3, 2, 4.5, 0, 6.5, 3.2, 2.6]], np.float32)
    a = Assignments(paths, np.zeros(7, np.int64), np.full(7, 0.8))
    out = tmp_path / "r.html"
    write_report(out, a, Z, centers=np.array([[3.0, 0.0]]), options=ReportOptions(typical=3, atypical=2, map_method="pca"))
    part = section(out.read_text(), "cluster-0")
    order = [int(m) for m in re.findall(r'title="[^"]*img(\d)\.png"', part)]
    assert order == [0, 5, 6, 4, 3]  # 3 nearest, then the 2 farthest, farthest first
    score = typicality(Z, np.zeros(7, np.int64), np.array([[3.0, 0.0]]))
    assert np.argmin(score) == 0 and np.argmax(score) == 4


def test_map_is_sampled_and_rejected_images_are_grey(tmp_path):
    root = make_shape_images(tmp_path / "s", n_per_class=10)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(30, 5)).astype(np.float32)
    clusters = np.array([0] * 12 + [1] * 12 + [-1] * 6)
    a = Assignments(paths, clusters, rng.uniform(size=30))
    stats = write_report(tmp_path / "r.html", a, Z, options=ReportOptions(map_max_points=10, map_method="pca"))
    html = (tmp_path / "r.html").read_text()
    d = map_data(html)
    assert stats.n_map_points == len(d["x"]) == 10 and "a uniform sample of 10 of 30" in html
    assert d["clusterNames"] == ["0", "1", "unassigned (-1)"] and d["colors"][-1] == "#9a9a9a"
    assert "Fit no cluster: 6 images" in html
    assert min(d["x"]) == 0 and max(d["x"]) == 4095


def test_verbose_report_names_each_long_step_and_its_time(tmp_path, capsys):
    root = make_shape_images(tmp_path / "s", n_per_class=4)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    Z = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    a = Assignments(paths, np.arange(12) % 2, np.full(12, 0.9))
    write_report(tmp_path / "r.html", a, Z, options=ReportOptions(map_max_points=10, map_previews=4, map_method="pca"))
    assert capsys.readouterr().err == ""
    write_report(tmp_path / "r.html", a, Z, options=ReportOptions(map_max_points=10, map_previews=4, map_method="pca",
                                                                  verbose=True))
    lines = [re.sub(r" \d+\.\d s$", " T", line) for line in capsys.readouterr().err.splitlines()]
    assert lines == ["thumbnails of 12 images ... T", "map of 10 points ... T", "map previews of 4 images ... T"], lines


# UMAP is left to the CIFAR benchmark: its one-off JIT compilation takes minutes on a busy CPU.
@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_map_embedding_methods(method):
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    Y, used = map_embedding(X, method)
    assert Y.shape == (40, 2) and np.isfinite(Y).all() and used == method
    assert map_embedding(X[:5], method)[1] == "pca"  # too few points for a neighbour graph


def test_partial_labels_score_the_labelled_images_only(tmp_path):
    # Two clusters of 6; only 4 images of each have a label. Of the labelled 8, cluster 0 holds
    # a, a, a, b and cluster 1 b, b, b, b: ACC 7/8 on them (the unlabelled ones would not count).
    root = make_shape_images(tmp_path / "s", n_per_class=4)
    paths = sorted(str(p) for p in root.rglob("*.png"))[:12]
    clusters = np.array([0] * 6 + [1] * 6)
    labels = ["a", "a", "a", "b", None, None, "b", "b", "b", "b", None, None]
    Z = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    stats = write_report(tmp_path / "r.html", Assignments(paths, clusters, np.ones(12)), Z, labels=labels,
                         options=ReportOptions(**FAST))
    html = (tmp_path / "r.html").read_text()
    assert stats.n_labelled == 8
    assert re.search(r"<b>0\.875</b><span>ACC</span>", html) and "<b>8 of 12</b><span>labelled (scored)</span>" in html
    assert "the 8 labelled images of 12" in html and 'alt="confusion matrix"' in html
    assert "most common class a (75% of 4 labelled)" in section(html, "cluster-0")
    d = map_data(html)
    assert d["classes"] == ["a", "b", "no label"] and d["classColors"][-1] == "#9a9a9a"
    assert sorted(d["l"]) == [0] * 3 + [1] * 5 + [2] * 4
    with pytest.raises(LabelsError, match="none of the 12 images has a label"):
        write_report(tmp_path / "r2.html", Assignments(paths, clusters, np.ones(12)), Z, labels=[None] * 12)
    assert not (tmp_path / "r2.html").exists()


def test_bad_inputs_say_what_to_do(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(p)
    a = Assignments([str(p)] * 3, np.zeros(3, np.int64), np.ones(3))
    with pytest.raises(InputError, match=r"one row per assignment \(3\)"):
        write_report(tmp_path / "r.html", a, np.zeros((2, 4)))
    with pytest.raises(LabelsError, match="one label per assigned image"):
        write_report(tmp_path / "r.html", a, np.zeros((3, 4)), labels=["x"])
    with pytest.raises(InputError, match="map_method must be"):
        write_report(tmp_path / "r.html", a, np.zeros((3, 4)), options=ReportOptions(map_method="mds"))
    with pytest.raises(InputError, match="nothing to report"):
        write_report(tmp_path / "r.html", Assignments([], np.zeros(0), np.zeros(0)), np.zeros((0, 4)))
    assert not (tmp_path / "r.html").exists()


def test_cli_report(tmp_path, cli):
    shapes = make_shape_images(tmp_path / "shapes", n_per_class=8)
    (shapes / "red_disc" / "bad.jpg").write_bytes(b"not a jpeg")
    model, fit_csv, out = tmp_path / "m.vcm", tmp_path / "fit.csv", tmp_path / "report.html"
    r = cli("fit", shapes, "-k", "3", "--backbone", "baseline/pixels", "--pca", "0", "--umap-neighbors", "5", "-o", model,
            "--assignments", fit_csv, "-q")
    assert r.returncode == 1, r.stderr  # bad.jpg skipped, listed in fit.skipped.csv
    assert visclust.load(model).feature_clusterer_.umap_neighbors == 5
    r = cli("report", model, "--assignments", fit_csv, "--output", out, "--labels", "folders", "--map", "pca",
            "--typical", "4", "--atypical", "2", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert re.search(r"report of 24 images in 3 clusters written to .*report\.html: [\d.]+ MB, 42 thumbnails", r.stderr)
    html = out.read_text()
    assert "Skipped images (1)" in html and "bad.jpg" in html and "<span>ACC</span>" in html

    # A CSV that labels some of the images: those are scored, the others shown, and it says so.
    some = sorted(shapes.rglob("*.png"))[::3]
    (tmp_path / "some.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in some))
    r = cli("report", model, "--assignments", fit_csv, "--output", out, "--labels", tmp_path / "some.csv",
            "--map", "pca", "--workers", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert f"scored the {len(some)} of 24 images that have a label in" in r.stderr and "Traceback" not in r.stderr
    assert f"<b>{len(some)} of 24</b><span>labelled (scored)</span>" in out.read_text()

    r = cli("report", model, "--assignments", fit_csv, "--output", out, "--typical", "-1")
    assert r.returncode == 2 and "typical must be an integer >= 0" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                    "apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_report_in_a_real_browser(shapes_report, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    out, stats, shapes = shapes_report
    browser.get(Path(out).as_uri())
    browser.execute_async_script(
        "var done=arguments[0];Promise.all(Array.from(document.images).map(i=>i.decode())).then(()=>done(1),()=>done(0));")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    n_img, n_decoded = browser.execute_script(
        "var im=Array.from(document.images);return [im.length, im.filter(i=>i.complete&&i.naturalWidth>0).length];")
    assert n_img == n_decoded == stats.n_thumbnails + 2 + 1 + 1  # + 2 plots, confusion matrix, map atlas
    # The map is drawn: every point, in non-white pixels on the canvas.
    assert browser.execute_script("return document.getElementById('map').getAttribute('data-drawn')") == "37"
    inked = browser.execute_script(
        "var c=document.getElementById('map'),d=c.getContext('2d').getImageData(0,0,c.width,c.height).data,n=0;"
        "for(var i=0;i<d.length;i+=4){if(d[i+3]>0&&(d[i]<240||d[i+1]<240||d[i+2]<240))n++;}return n;")
    assert inked >= 37 * 4
    # Hovering the hostile file's point shows its exact path as text (no markup ran).
    target = str(shapes / "red_disc" / HOSTILE)
    canvas = browser.find_element("id", "map")
    browser.execute_script("arguments[0].scrollIntoView({block:'center'})", canvas)
    dx, dy = browser.execute_script(
        "var D=JSON.parse(document.getElementById('map-data').textContent),i=D.p.indexOf(arguments[0]),"
        "r=document.getElementById('map').getBoundingClientRect();"
        "return [12+D.x[i]/4095*(r.width-24)-r.width/2, 12+(1-D.y[i]/4095)*(r.height-24)-r.height/2];", target)
    ActionChains(browser).move_to_element_with_offset(canvas, round(dx), round(dy)).click().perform()
    shown = browser.find_element("css selector", "#info .path").text
    assert shown == target
    preview_inked = browser.execute_script(
        "var c=document.getElementById('preview'),d=c.getContext('2d').getImageData(0,0,c.width,c.height).data,n=0;"
        "for(var i=3;i<d.length;i+=4){if(d[i]>0)n++;}return n;")
    assert preview_inked > 0
    assert browser.get_log("browser") == []
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 100, 8000))
    browser.execute_script("window.scrollTo(0,0)")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_report_names_the_next_best_levels_of_clusters_auto(tmp_path):
    shapes = make_shape_images(tmp_path / "shapes", n_per_class=8)
    clusterer = visclust.FeatureClusterer(method="kmeans", space="pca", k_range=(2, 6), random_state=0)
    model = visclust.ImageClusterer(backbone="baseline/pixels", n_clusters="auto", clusterer=clusterer, progress=False)
    model.fit([str(shapes)])
    fc = model.feature_clusterer_
    assert fc.k_scores_ and set(fc.k_scores_) == set(range(2, 7))
    report_model(model, model.training_assignments(), tmp_path / "r.html", options=ReportOptions(**FAST))
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    nxt = other_levels(fc.k_scores_)
    want = f"{fc.n_clusters_} (--clusters auto" + (f"; next best {', '.join(map(str, nxt))})" if nxt else ")")
    assert want in html, re.findall(r"clusters[^<]{0,80}", html)


@pytest.mark.slow
def test_partial_labels_in_a_real_browser(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    root = make_shape_images(tmp_path / "s", n_per_class=4)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    n = len(paths)
    labels = [Path(p).parent.name if i % 2 else None for i, p in enumerate(paths)]
    Z = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    out = tmp_path / "r.html"
    write_report(out, Assignments(paths, np.arange(n) % 3, np.ones(n)), Z, labels=labels, options=ReportOptions(**FAST))
    browser.get(out.as_uri())
    Select(browser.find_element("id", "colour-by")).select_by_value("class")
    canvas = browser.find_element("id", "map")
    browser.execute_script("arguments[0].scrollIntoView({block:'center'})", canvas)
    dx, dy = browser.execute_script(
        "var D=JSON.parse(document.getElementById('map-data').textContent),i=D.p.indexOf(arguments[0]),"
        "r=document.getElementById('map').getBoundingClientRect();"
        "return [12+D.x[i]/4095*(r.width-24)-r.width/2, 12+(1-D.y[i]/4095)*(r.height-24)-r.height/2];", paths[0])
    ActionChains(browser).move_to_element_with_offset(canvas, round(dx), round(dy)).click().perform()
    assert browser.find_element("css selector", "#info .path").text == paths[0]
    assert "class no label" in browser.find_element("css selector", "#info .fields").text
    assert browser.get_log("browser") == []
