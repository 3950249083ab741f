import pytest
import torch

from visclust.backbones import (BackboneConfig, Preprocess, create_backbone, get_backbone_info, list_backbones)
from visclust.exceptions import UnknownBackboneError, WeightsUnavailableError


def test_registry_lists_the_design_networks_with_sizes():
    names = {i.name: i for i in list_backbones()}
    assert names["torchvision/vgg16"].feature_dim == 4096
    assert names["torchvision/resnet50"].feature_dim == 2048
    assert names["torchvision/mobilenet_v2"].feature_dim == 1280
    assert names["torchvision/resnet50"].preprocess.input_size == 224


@pytest.mark.parametrize("name", ["torchvision/mobilenet_v2", "torchvision/resnet18", "baseline/pixels"])
def test_forward_gives_pooled_features_of_registered_size(name):
    bb = create_backbone(name, pretrained=False)
    size = bb.preprocess.input_size
    with torch.inference_mode():
        out = bb.module(torch.randn(2, 3, size, size))
    assert out.shape == (2, bb.feature_dim)


def test_random_weights_are_reproducible_and_hashed():
    a = create_backbone("torchvision/resnet18", pretrained=False, seed=3)
    b = create_backbone("torchvision/resnet18", pretrained=False, seed=3)
    c = create_backbone("torchvision/resnet18", pretrained=False, seed=4)
    assert a.config.weights_sha256 == b.config.weights_sha256 != c.config.weights_sha256


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(UnknownBackboneError, match="did you mean 'torchvision/resnet50'"):
        get_backbone_info("torchvision/resnet5")
    with pytest.raises(KeyError):  # also a builtin KeyError
        get_backbone_info("nothing/here")


def test_download_failure_says_how_to_fix(monkeypatch):
    import torchvision.models as tvm

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        create_backbone("torchvision/resnet50")


def test_an_offline_timm_download_is_one_line_on_stderr(tmp_path):
    """Offline, the Hugging Face Hub logged its own warning before visclust's one-line error."""
    import subprocess
    import sys

    pytest.importorskip("timm")
    code = (
        "import sys, timm\n"
        "from huggingface_hub.utils import logging\n"
        "def offline(*a, **k):\n"
        "    if k.get('pretrained'):\n"
        "        logging.get_logger('huggingface_hub.utils._http').warning(\"'Name or service not known' thrown\")\n"
        "        raise OSError('We cannot find the requested files in the local cache')\n"
        "    return real(*a, **k)\n"
        "real, timm.create_model = timm.create_model, offline\n"
        "from visclust.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    r = subprocess.run([sys.executable, "-c", code, "fit", str(tmp_path), "-k", "2", "--backbone", "timm/resnet18",
                        "-o", str(tmp_path / "m.vcm")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot obtain pretrained weights for 'timm/resnet18'" in r.stderr and "thrown" not in r.stderr


def test_weights_file_safetensors_and_pth_load_the_same(tmp_path):
    from safetensors.torch import save_file

    import torchvision.models as tvm

    torch.manual_seed(0)
    full = tvm.resnet18()
    sd = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    a = create_backbone("torchvision/resnet18", weights=tmp_path / "w.safetensors")
    b = create_backbone("torchvision/resnet18", weights=tmp_path / "w.pth")
    assert a.config.weights_sha256 == b.config.weights_sha256


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"nope": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsUnavailableError, match="does not fit backbone"):
        create_backbone("torchvision/resnet18", weights=tmp_path / "bad.safetensors")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone("torchvision/resnet18", weights=tmp_path / "missing.safetensors")


def test_pickle_weights_are_not_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(WeightsUnavailableError):
        create_backbone("torchvision/resnet18", weights=tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_config_round_trip_and_cache_key_changes_with_preprocessing():
    cfg = BackboneConfig("x/y", "ab" * 32, 10, Preprocess())
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    other = BackboneConfig("x/y", "ab" * 32, 10, Preprocess(resize_size=300))
    assert cfg.cache_key() != other.cache_key()


def test_shared_mobilenet_recognises_real_photos(mobilenet_weights, shared):
    """Quality check of the real pretrained weights through our preprocessing."""
    import torchvision.models as tvm
    from safetensors.torch import load_file

    from visclust.features import preprocess_image
    from visclust.io import load_image

    bb = create_backbone("torchvision/mobilenet_v2", weights=mobilenet_weights)
    head = tvm.mobilenet_v2()
    head.load_state_dict({k: v.float() for k, v in load_file(mobilenet_weights).items()})
    labels = (shared / "weights/imagenet_labels_1001.txt").read_text().splitlines()[1:]
    pre = bb.preprocess
    hits = 0
    for name, word in (("cat.png", "cat"), ("parrot.jpg", "macaw"), ("hot_dog.jpg", "hotdog"), ("owl.jpg", "owl")):
        arr = preprocess_image(load_image(shared / "data/photos" / name), pre)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            feats = bb.module(x)
            top5 = head.classifier(feats).topk(5).indices[0].tolist()
        hits += any(word in labels[i].lower().replace(" ", "").replace("-", "") for i in top5)
    assert hits >= 3


PLUGIN = '''
import torch
from safetensors.torch import load_file
from visclust.backbones import BackboneInfo, Preprocess, register_backbone

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(x).relu().mean((2, 3))

def build(weights, pretrained):
    net = Tiny()
    if weights:
        net.load_state_dict(load_file(weights))
    return net, Preprocess(input_size=32, resize_size=32)

def register():
    register_backbone(BackboneInfo("mine/tiny", 8, Preprocess(32, 32), "a network of my own", build))
'''


def test_a_network_of_ones_own_from_an_installed_package_works_in_the_cli(tmp_path, shape_images, cli):
    """A package registers its backbones through the 'visclust.backbones' entry point: the CLI
    (a fresh process) fits, saves and predicts with them; a plugin that fails is one warning."""
    from safetensors.torch import save_file

    from conftest import make_shape_images

    site = tmp_path / "site"
    site.mkdir()
    (site / "mine_plugin.py").write_text(PLUGIN)
    info = site / "mine_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[visclust.backbones]\ntiny = mine_plugin:register\n"
                                           "broken = no_such_module:register\n")
    env = {"PYTHONPATH": str(site)}
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2)
    save_file({"conv.weight": conv.weight.detach().contiguous(), "conv.bias": conv.bias.detach()}, tmp_path / "w.safetensors")

    r = cli("backbones", env=env)
    assert r.returncode == 0 and "mine/tiny" in r.stdout and "a network of my own" in r.stdout, r.stderr
    assert "warning: backbone plugin 'broken' (no_such_module:register) failed to load: ModuleNotFoundError" in r.stderr
    assert "Traceback" not in r.stderr
    model, fitcsv, again = tmp_path / "m.vcm", tmp_path / "fit.csv", tmp_path / "again.csv"
    r = cli("fit", shape_images, "-k", "3", "--backbone", "mine/tiny", "--weights", tmp_path / "w.safetensors",
            "-o", model, "--assignments", fitcsv, "-q", env=env)
    assert r.returncode == 0, r.stderr
    new = make_shape_images(tmp_path / "new", n_per_class=2, seed=3)
    r = cli("predict", model, new, "--weights", tmp_path / "w.safetensors", "-o", again, "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert len(again.read_text().splitlines()) == 1 + 6 and len(fitcsv.read_text().splitlines()) == 1 + 36
    r = cli("predict", model, new, "--weights", tmp_path / "w.safetensors", "-q")  # the package is not installed
    assert r.returncode == 2 and "unknown backbone 'mine/tiny'" in r.stderr and "'visclust.backbones' entry point" in r.stderr
