"""Built-in backbones: forward shapes, weight loading and conversion, and proof that the ImageNet weights are real."""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from bench import paths, plugins
from bench.backbone import Backbone, Checkpoint, Preprocessing, save_checkpoint
from bench.extract.export import export_onnx
from bench.cli import app
from bench.errors import BenchError
from bench.testing import check_backbone
from plugins.backbones import efficientnet, vggm
from plugins.backbones.vggm_net import VGGM

REGISTERED = list(plugins.backbones())  # built-ins and installed plugins alike: a new one is tested unlisted
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = range(967, 969)  # espresso, cup
SMALL = (8, 16, 16, 16, 16)  # VGG-M conv widths for tests (the geometry is the real one)
SMALL_FC = 32

runner = CliRunner()


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """As bench.images.load_image does: resize ignoring the aspect ratio, bilinear."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def test_bench_backbones_lists_every_registered_backbone(monkeypatch):
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    builtin = {"vgg-m", "vgg16", "scratch", "retino", "double", "efficientnet-lite0", "efficientnet-lite1",
               "efficientnet-lite2"}
    assert builtin <= set(REGISTERED)
    for name in REGISTERED:
        assert f" {name} " in result.output


def one_per_architecture() -> list[str]:
    """The first name registered for each `build` (vgg-m, scratch, retino and double share VGG-M's)."""
    first: dict = {}
    for name, backbone in plugins.backbones().items():
        first.setdefault(backbone.build, name)
    return list(first.values())


@pytest.mark.parametrize("name", one_per_architecture())
def test_every_architecture_keeps_the_backbone_contract(name):
    """Preprocessing, forward shape, layer order and train_last, at 64 px to keep the fast loop fast."""
    check_backbone(plugins.get_backbone(name), size=64, onnx=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTERED)
def test_every_backbone_keeps_its_contract_onnx_export_included(name):
    check_backbone(plugins.get_backbone(name), size=64)


class _Net(nn.Module):
    """conv -> pool -> linear, with the layers registered in `order`, and optionally an unused classifier."""

    def __init__(self, order: tuple[str, ...] = ("conv", "head"), unused_classifier: bool = False):
        super().__init__()
        for name in order:
            setattr(self, name, nn.Conv2d(3, 4, 3) if name == "conv" else nn.Linear(4, 4))
        if unused_classifier:
            self.classifier = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("net, feature_dim, words", [
    (_Net, 5, r"maps 1 image\(s\) to \(1, 4\), not \(1, 5\)"),
    (lambda: _Net(order=("head", "conv")), 4, "registered in another order"),
    (lambda: _Net(unused_classifier=True), 4, "gets no gradient"),
])
def test_check_backbone_names_the_broken_promise(net, feature_dim, words):
    broken = Backbone("broken", "test", Preprocessing(size=16), "head", feature_dim, "random", build=net)
    with pytest.raises(AssertionError, match=words):
        check_backbone(broken, onnx=False)


def test_check_backbone_passes_the_sound_net_and_exports_it():
    check_backbone(Backbone("sound", "test", Preprocessing(size=16), "head", 4, "random", build=_Net))


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
@pytest.mark.slow
def test_efficientnet_weights_are_the_real_imagenet_ones(variant):
    backbone = plugins.get_backbone(f"efficientnet-{variant}")
    net = backbone.create()
    size = backbone.preprocessing.size
    images = np.stack([_resized(data.chelsea(), size), _resized(data.coffee(), size)])
    with torch.no_grad():
        features = net(torch.from_numpy(backbone.preprocessing.normalise(images)))
        top1 = efficientnet.imagenet_classifier(variant)(features).argmax(1).tolist()
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert top1[0] in IMAGENET_CATS and top1[1] in IMAGENET_COFFEE, top1


def test_a_size_asked_by_name_is_its_own_backbone_and_beats_a_checkpoints_size(tmp_path):
    sized = plugins.get_backbone("efficientnet-lite0@320")
    assert sized.name == "efficientnet-lite0@320" and sized.preprocessing.size == 320
    assert sized.source_stages == plugins.get_backbone("efficientnet-lite0").source_stages
    checkpoint = save_checkpoint(tmp_path / "ft.pt", sized.build(), sized.name, sized.preprocessing.with_size(96))
    assert Checkpoint(checkpoint).preprocessing(sized.preprocessing).size == 96
    assert export_onnx(sized, checkpoint).preprocessing.size == 320


@pytest.mark.parametrize("name", ["efficientnet-lite0@big", "efficientnet-lite0@8"])
def test_a_bad_size_after_the_at_is_refused(name):
    with pytest.raises(BenchError, match="size after @"):
        plugins.get_backbone(name)


def test_scratch_initial_weights_are_seeded_orthogonal_with_biases_005():
    load_initial = plugins.get_backbone("scratch").load_initial
    nets = [VGGM(SMALL, SMALL_FC), VGGM(SMALL, SMALL_FC)]
    for net in nets:
        torch.manual_seed(3)
        load_initial(net)
    fc7, conv2 = nets[0].fc.fc7, nets[0].features.conv2
    assert torch.allclose(fc7.weight @ fc7.weight.T, torch.eye(SMALL_FC), atol=1e-5)
    rows = conv2.weight.flatten(1)  # 16 filters of 8 * 25 weights: orthonormal rows
    assert torch.allclose(rows @ rows.T, torch.eye(16), atol=1e-5)
    assert (fc7.bias == 0.05).all() and (conv2.bias == 0.05).all()
    assert torch.equal(nets[0].fc.fc6.weight, nets[1].fc.fc6.weight)


@pytest.mark.parametrize("name, file, command", [
    ("vgg-m", "vgg-m-imagenet.pt", "bench weights import-matconvnet imagenet-vgg-m.mat"),
    ("retino", "retino.pt", "bench train --backbone retino --dataset kaggle-dr --root PATH"),
    ("double", "double.pt", "bench train --backbone double --dataset kaggle-dr --root PATH"),
])
def test_vggm_initial_weights_come_from_the_weights_folder(name, file, command):
    backbone = plugins.get_backbone(name)
    with pytest.raises(BenchError, match=command.replace("[", r"\[")) as error:
        backbone.load_initial(VGGM(SMALL, SMALL_FC))
    assert str(paths.weights_dir(paths.home()) / file) in str(error.value)
    saved = VGGM(SMALL, SMALL_FC)
    save_checkpoint(paths.weights_dir(paths.home()) / file, saved, name, backbone.preprocessing)
    net = VGGM(SMALL, SMALL_FC)
    backbone.load_initial(net)
    assert torch.equal(net.fc.fc7.weight, saved.fc.fc7.weight)


def test_source_stages_name_their_dataset_and_start():
    stages = {name: plugins.get_backbone(name).source_stages for name in ("retino", "double", "scratch", "vgg-m")}
    assert [(s.dataset, s.start, s.output) for s in stages["retino"]] == [("kaggle-dr", "scratch", "retino.pt")]
    assert [(s.dataset, s.start, s.output) for s in stages["double"]] == [("kaggle-dr", "vgg-m", "double.pt")]
    assert stages["scratch"] == stages["vgg-m"] == ()


# --- MatConvNet import -------------------------------------------------------------------------------------------


def _cell(*items) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def write_vggm_mat(path: Path, rng: np.random.Generator, pool2_pad=(0, 1, 0, 1), old_format: bool = False,
                   drop: str = "") -> dict:
    """A MatConvNet SimpleNN VGG-M with the real geometry, narrower layers and random weights; returns its arrays."""
    c1, c2, c3, c4, c5 = SMALL
    shapes = {"conv1": (7, 7, 3, c1), "conv2": (5, 5, c1, c2), "conv3": (3, 3, c2, c3), "conv4": (3, 3, c3, c4),
              "conv5": (3, 3, c4, c5), "fc6": (6, 6, c5, SMALL_FC), "fc7": (1, 1, SMALL_FC, SMALL_FC),
              "fc8": (1, 1, SMALL_FC, 10)}
    # conv1 strong enough that LRN's alpha matters: a mapping error there shows
    arrays = {name: (rng.normal(0, 0.05 if name == "conv1" else 0.1, shape).astype(np.float32),
                     rng.normal(0, 0.1, (1, shape[3])).astype(np.float32)) for name, shape in shapes.items()}

    def conv(name, stride=1, pad=0):
        weight, bias = arrays[name]
        params = {"filters": weight, "biases": bias} if old_format else {"weights": _cell(weight, bias)}
        return {"type": "conv", "name": name, "stride": np.array([stride, stride], float), "pad": pad, **params}

    def relu(i):
        return {"type": "relu", "name": f"relu{i}"}

    def norm(i):
        return {"type": "normalize", "name": f"norm{i}", "param": np.array([5, 2, 1e-4, 0.75])}

    def pool(i, pad=0):
        return {"type": "pool", "name": f"pool{i}", "method": "max", "pool": np.array([3.0, 3.0]),
                "stride": np.array([2.0, 2.0]), "pad": np.asarray(pad, float)}

    layers = [conv("conv1", 2), relu(1), norm(1), pool(1), conv("conv2", 2, 1), relu(2), norm(2), pool(2, pool2_pad),
              conv("conv3", pad=1), relu(3), conv("conv4", pad=1), relu(4), conv("conv5", pad=1), relu(5), pool(5),
              conv("fc6"), relu(6), conv("fc7"), relu(7), conv("fc8"), {"type": "softmax", "name": "prob"}]
    average = (np.array([120.0, 110.0, 100.0]) + rng.normal(0, 20, (224, 224, 3))).astype(np.float32)
    normalization = {"averageImage": average, "imageSize": np.array([224.0, 224.0, 3.0])}
    meta = {"normalization": normalization} if old_format else {"meta": {"normalization": normalization}}
    scipy.io.savemat(path, {"layers": _cell(*[layer for layer in layers if layer["name"] != drop]), **meta})
    arrays["mean"] = average.reshape(-1, 3).mean(axis=0)
    return arrays


@pytest.mark.parametrize("old_format", [False, True])
def test_matconvnet_import_reproduces_hand_computed_layers(tmp_path, old_format):
    rng = np.random.default_rng(0)
    arrays = write_vggm_mat(tmp_path / "imagenet-vgg-m.mat", rng, old_format=old_format)
    result = runner.invoke(app, ["weights", "import-matconvnet", str(tmp_path / "imagenet-vgg-m.mat")])
    assert result.exit_code == 0, result.output
    checkpoint = paths.weights_dir(paths.home()) / "vgg-m-imagenet.pt"  # the default --out is where `vgg-m` looks
    preprocessing = Checkpoint(checkpoint).preprocessing(vggm.PREPROCESSING)
    assert np.allclose(preprocessing.mean, arrays["mean"], atol=1e-3)
    assert (preprocessing.value_range, preprocessing.std, preprocessing.channel_order) == (255, (1, 1, 1), "RGB")
    net = VGGM(SMALL, SMALL_FC)
    plugins.get_backbone("vgg-m").load_initial(net)
    net.eval()

    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = torch.from_numpy(preprocessing.normalise(image[None]))
    with torch.no_grad():
        conv1 = net.features.conv1(x)[0].numpy()
        norm1 = net.features[:3](x)[0].numpy()
        pool5 = net.pool(net.features(x))[0].numpy()
        fc6 = net.fc.fc6(torch.from_numpy(pool5).flatten()[None])[0].numpy()
        features = net(x)

    # conv1 by hand: MatConvNet's H x W x in x out filters on RGB 0-255 minus the mean, stride 2, no padding
    w1, b1 = arrays["conv1"]
    centred = image.astype(np.float64) - arrays["mean"]
    for o, y, x_ in [(0, 0, 0), (3, 50, 7), (7, 108, 108)]:
        expected = b1[0, o] + np.sum(w1[..., o] * centred[2 * y:2 * y + 7, 2 * x_:2 * x_ + 7])
        assert conv1[o, y, x_] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    # norm1 by hand: MatConvNet's LRN, x / (kappa + alpha * sum over 5 channels of x^2)^beta, no division by 5
    relu = np.maximum(conv1, 0)
    y, x_ = np.unravel_index(np.argmax((relu ** 2).sum(axis=0)), relu.shape[1:])  # where LRN matters most
    a = relu[:, y, x_].astype(np.float64)
    for o in range(len(a)):
        scale = 2 + 1e-4 * np.sum(a[max(0, o - 2):o + 3] ** 2)
        assert norm1[o, y, x_] == pytest.approx(a[o] / scale ** 0.75, rel=1e-4)
    assert 1e-4 * np.sum(a ** 2) > 1  # large enough that a wrong alpha would show
    # fc6 by hand: the 6 x 6 x c5 x fc filter bank applied to pool5 (channel, row, column)
    w6, b6 = arrays["fc6"]
    assert np.allclose(fc6, b6[0] + np.einsum("hwco,chw->o", w6, pool5), rtol=1e-4, atol=1e-4)
    assert features.shape == (1, SMALL_FC) and torch.isfinite(features).all()


@pytest.mark.parametrize("change, words", [({"pool2_pad": 0}, ["pool2", "pad"]), ({"drop": "norm2"}, ["norm2"])])
def test_matconvnet_import_refuses_a_network_that_computes_something_else(tmp_path, change, words):
    write_vggm_mat(tmp_path / "other.mat", np.random.default_rng(0), **change)
    out = tmp_path / "out.pt"
    result = runner.invoke(app, ["weights", "import-matconvnet", str(tmp_path / "other.mat"), "--out", str(out)])
    assert isinstance(result.exception, BenchError)
    assert all(word in str(result.exception) for word in [str(tmp_path / "other.mat"), *words])
    assert not out.exists()


def test_matconvnet_import_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "imagenet-vgg-m.mat"
    bad.write_text("not a mat file")
    result = runner.invoke(app, ["weights", "import-matconvnet", str(bad)])
    assert isinstance(result.exception, BenchError) and str(bad) in str(result.exception)


# --- VGG-16 ------------------------------------------------------------------------------------------------------


def _offline(*args, **kwargs):
    raise URLError("no network in tests")


@pytest.fixture(scope="module")
def torchvision_vgg16_file(tmp_path_factory) -> Path:
    """Random VGG-16 weights in torchvision's layout (features.*, classifier.0/3/6.*) at the torch hub cache path."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    hub = tmp_path_factory.mktemp("torch-home") / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    path = hub / "vgg16-397923af.pth"
    torch.save(vgg16().state_dict(), path)
    return path


@pytest.mark.slow
def test_vgg16_loads_torchvision_weights_from_the_cache_or_a_file(torchvision_vgg16_file, monkeypatch):
    saved = torch.load(torchvision_vgg16_file, weights_only=True)
    backbone = plugins.get_backbone("vgg16")
    monkeypatch.setenv("TORCH_HOME", str(torchvision_vgg16_file.parents[2]))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)  # the cached file must be enough
    for net in (backbone.create(), backbone.create(weights=torchvision_vgg16_file)):
        assert torch.equal(net.classifier[3].weight, saved["classifier.3.weight"])
        assert torch.equal(net.features[0].weight, saved["features.0.weight"])
        with torch.no_grad():
            assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4096)


def test_vgg16_without_cached_weights_offline_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    backbone = plugins.get_backbone("vgg16")
    with pytest.raises(BenchError, match="--weights PATH") as error:
        backbone.load_initial(backbone.build())
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in str(error.value)


def test_vgg16_refuses_a_file_of_another_architecture(tmp_path):
    path = save_checkpoint(tmp_path / "vggm.pt", VGGM(SMALL, SMALL_FC), "vgg-m", vggm.PREPROCESSING)
    backbone = plugins.get_backbone("vgg16")
    with pytest.raises(BenchError, match="does not fit"):
        backbone.create(path)
