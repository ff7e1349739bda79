"""Any timm / Hugging Face / open_clip model by name (issue 22), offline: random weights written by the test and
read through `--weights`, `check_backbone`, ONNX parity, extraction into a store and evaluation. Nothing downloads:
the Hugging Face hub is switched to offline mode for the whole module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from bench import plugins
from bench.backbone import Preprocessing
from bench.cli import app
from bench.errors import BenchError
from bench.testing import check_backbone
from featurestore import FeatureStore
from featurestore.keys import is_backbone_name, name_of, path_part
from plugins.backbones import named

runner = CliRunner()
SIZE = 64  # every model is fed 64 x 64 images (`@64`): the tests check the plumbing, not the accuracy
DATA = ["--dataset", "synthetic", "-o", "n=120", "-o", f"size={SIZE}"]
SLOW = pytest.mark.slow  # 10-20 s each on 2 cores, most of it torch's ONNX export: two families stay in the quick run
FAMILIES = ["timm:resnet10t", "timm:convnext_atto", pytest.param("timm:vit_tiny_patch16_224", marks=SLOW),
            pytest.param("timm:efficientnet_b0", marks=SLOW), pytest.param("timm:mobilenetv3_small_050", marks=SLOW),
            pytest.param("timm:regnetx_002", marks=SLOW)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub in offline mode: a weights lookup fails at once instead of reaching (or waiting for) the network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def cli(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, (BenchError, SystemExit)):
        raise result.exception
    return result


def error(*args: str) -> str:
    """The one line a failing command prints (`bench.cli.main` prints a BenchError's text)."""
    out = cli(*args)
    assert isinstance(out.exception, BenchError), out.output
    message = str(out.exception)
    assert "\n" not in message, message
    return message


def random_weights(name: str, path: Path) -> Path:
    """The backbone's architecture with random weights, plus a classifier the feature net does not have (as in a
    published timm file), saved as safetensors."""
    backbone = plugins.get_backbone(name)
    torch.manual_seed(1)
    state = backbone.build().state_dict()
    classifier = named._timm_meta(name.split(":")[1].split("@")[0]).pretrained_cfg["classifier"]
    classifier = classifier if isinstance(classifier, str) else classifier[0]
    state |= {f"{classifier}.weight": torch.zeros(10, backbone.feature_dim), f"{classifier}.bias": torch.zeros(10)}
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_a_timm_model_is_a_backbone_from_weights_to_evaluation(name, tmp_path):
    sized = f"{name}@{SIZE}"
    backbone = plugins.get_backbone(sized)
    check_backbone(backbone, onnx=False)  # forward, layer order, train_last; the extraction checks ONNX parity
    weights = random_weights(sized, tmp_path / "w.safetensors")
    store = tmp_path / "store"
    out = cli("extract", "--backbone", sized, "--weights", str(weights), *DATA, "--store", str(store))
    assert out.exit_code == 0, out.output
    assert "max |onnx - torch|" in out.output
    features = FeatureStore(store).read("synthetic", sized, "frozen")
    assert features.features.shape == (120, backbone.feature_dim)
    assert features.attrs["preprocessing"]["resize_mode"] == "shorter-side"  # timm's resize + centre crop, recorded
    assert features.attrs["weights"] == str(weights)
    assert (store / "synthetic" / path_part(sized) / "frozen").is_dir()
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", sized, *DATA, "--store", str(store),
              "--results", str(tmp_path / "results.csv"))
    assert out.exit_code == 0, out.output


def test_the_feature_is_timms_pooled_pre_logits():
    """convnext's head has a norm before its classifier: the feature is what `pre_logits=True` returns."""
    import timm

    net = plugins.get_backbone("timm:convnext_atto").build().eval()
    full = timm.create_model("convnext_atto", pretrained=False)
    full.load_state_dict(net.state_dict(), strict=False)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x.clone()), pre_logits=True)
        assert torch.allclose(net(x), expected, atol=1e-5)


def test_preprocessing_is_timms_eval_transform(tmp_path):
    """Resize of the shorter side to size / crop_pct, centre crop, bicubic: the pixels timm's own transform gives."""
    import timm
    from timm.data import create_transform, resolve_data_config

    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(path)
    backbone = plugins.get_backbone("timm:convnext_atto")
    transform = create_transform(**resolve_data_config(model=timm.create_model("convnext_atto")))
    with Image.open(path) as image:
        expected = np.asarray(transform.transforms[1](transform.transforms[0](image.convert("RGB"))))
    assert np.array_equal(backbone.preprocessing.load(path), expected)
    assert backbone.preprocessing.to_dict()["crop_pct"] == 0.875


def test_preprocessing_without_the_new_fields_keeps_its_identity():
    """Existing backbones' models and feature sets are keyed by `to_dict`: it must not change for them."""
    saved = Preprocessing().to_dict()
    assert set(saved) == {"size", "mean", "std", "channel_order", "value_range"}
    assert Preprocessing.from_dict(saved) == Preprocessing()
    shorter = Preprocessing(resize_mode="shorter-side", crop_pct=0.9, interpolation="bicubic")
    assert Preprocessing.from_dict(shorter.to_dict()) == shorter


def test_prefixed_names_are_path_safe_and_read_back():
    for name in ("timm:convnext_atto.d2_in1k@160", "hf-hub:timm/vit_small_patch14_dinov2.lvd142m",
                 "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"):
        part = path_part(name)
        assert "/" not in part and ":" not in part and name_of(part) == name
    assert path_part("efficientnet-lite1@448") == "efficientnet-lite1@448"  # built-in keys unchanged
    assert not any(map(is_backbone_name, ("timm:a--b", "timm:../x", "../x", "timm:", "x:a//b")))


def test_a_weights_file_placed_under_bench_home_is_used(bench_home, tmp_path):
    weights = random_weights(f"timm:resnet10t@{SIZE}", tmp_path / "w.safetensors")
    placed = named.local_weights("timm:resnet10t")
    assert placed == bench_home / "weights" / "timm~resnet10t.safetensors"
    placed.parent.mkdir(parents=True)
    weights.rename(placed)
    out = cli("extract", "--backbone", f"timm:resnet10t@{SIZE}", *DATA, "--limit", "8", "--store",
              str(tmp_path / "store"))
    assert out.exit_code == 0, out.output


def test_missing_weights_fail_in_one_line_before_any_work(bench_home, tmp_path):
    store = tmp_path / "store"
    said = error("extract", "--backbone", "timm:resnet10t", "--weights", str(tmp_path / "W.safetensors"), *DATA,
                 "--store", str(store))
    assert "W.safetensors" in said and "--weights PATH" in said
    said = error("extract", "--backbone", "timm:resnet10t", *DATA, "--store", str(store))  # offline, none placed
    assert "huggingface.co/timm/resnet10t" in said
    assert str(bench_home / "weights" / "timm~resnet10t.safetensors") in said
    assert not store.exists()
    said = error("train", "--backbone", "timm:resnet10t", "--weights", str(tmp_path / "W.pt"), *DATA,
                 "--protocol", "mela-vs-ben", "--fold", "r0f0", "--recipe", "cpu")
    assert "W.pt" in said and "--weights PATH" in said


def test_unknown_names_say_how_to_find_one():
    for name, said in (("timm:no_such_net", "bench backbones --search"), ("timm:resnet10t.no_tag", "no_tag"),
                       ("nolib:model", "no installed plugin knows the prefix"),
                       ("hf-hub:someone/not-cached", "run once online")):
        with pytest.raises(BenchError, match=said):
            plugins.get_backbone(name)


def test_vgg16_extract_reads_a_torchvision_state_dict_given_with_weights(tmp_path, monkeypatch):
    """The file reaches the export, which reads it (its digest keys the model); VGG-16's 500 MB export itself is
    left out for speed (test_backbones loads the same file into the network)."""
    from torchvision.models import vgg16

    from bench.extract import pipeline

    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg16().state_dict(), path)
    seen = {}

    def export(backbone, weights, **kwargs):
        seen["net"] = backbone.create(weights)
        raise BenchError("stopped after loading the weights")

    monkeypatch.setattr(pipeline, "export_onnx", export)
    said = error("extract", "--backbone", "vgg16", "--weights", str(path), *DATA, "--store", str(tmp_path / "s"))
    assert said == "stopped after loading the weights"
    expected = torch.load(path, weights_only=True)["features.0.weight"]
    assert torch.equal(seen["net"].state_dict()["features.0.weight"], expected)


def test_search_lists_whole_names_and_json():
    out = cli("backbones", "--search", "convnext_at")
    assert out.exit_code == 0, out.output
    assert "timm:convnext_atto.d2_in1k" in out.output and "…" not in out.output
    rows = json.loads(cli("backbones", "--search", "convnext_at", "--json").output)
    assert {"timm:convnext_atto.d2_in1k", "timm:convnext_atto_ols.a2_in1k"} <= {r["name"] for r in rows}
    assert all(r["dim"] == 320 and r["input"] == "224x224" for r in rows)


@SLOW
def test_an_open_clip_image_tower_is_a_backbone(tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="the clip extra is not installed")
    name = f"open_clip:ViT-S-32@{SIZE}"
    backbone = plugins.get_backbone(name)
    check_backbone(backbone, onnx=False)  # the extraction checks ONNX parity
    model = open_clip.create_model("ViT-S-32", force_image_size=SIZE)  # the whole CLIP model's file, as published
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "clip.safetensors")
    store = tmp_path / "store"
    out = cli("extract", "--backbone", name, "--weights", str(tmp_path / "clip.safetensors"), *DATA, "--store",
              str(store))
    assert out.exit_code == 0, out.output
    assert "max |onnx - torch|" in out.output
    assert FeatureStore(store).read("synthetic", name, "frozen").features.shape == (120, backbone.feature_dim)
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", name, *DATA, "--store", str(store),
              "--results", str(tmp_path / "results.csv"))
    assert out.exit_code == 0, out.output


def test_open_clip_without_the_extra_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    with pytest.raises(BenchError, match=r"pip install 'bench\[clip\]'"):
        plugins.get_backbone("open_clip:ViT-M-32")


STUDY = """
description = "library models in a study"
recipe = "demo"

[datasets.skin]
adapter = "synthetic"
options = { n = 80, size = 48 }

[backbones.resnet-random]
like = "timm:resnet10t"
weights = "random"

[[evaluate]]
dataset = "skin"
protocols = ["mela-vs-ben"]
frozen = ["timm:resnet10t@64", "timm:resnet10t@64+efficientnet-lite0 [power]", "resnet-random"]
"""


def test_a_study_names_library_models_like_installed_ones(tmp_path):
    from bench.study.plan import plan
    from bench.study.schema import load_study
    from bench.study.workspace import Workspace

    (tmp_path / "timm.toml").write_text(STUDY)
    study = load_study(tmp_path / "timm.toml")
    units = {u.key for u in plan(study, {0: ["r0f0"]}, Workspace(tmp_path).context(study))}
    assert {"extract skin/timm:resnet10t@64/frozen", "extract skin/resnet-random/frozen"} <= units
    (tmp_path / "typo.toml").write_text(STUDY.replace('"timm:resnet10t@64"', '"timm:resnet_10t"'))
    with pytest.raises(BenchError, match=r"evaluate\[0\].frozen\[0\]: timm has no model 'resnet_10t'"):
        load_study(tmp_path / "typo.toml")


def test_a_library_model_fine_tunes_from_its_weights_file_and_extracts_its_fold(tmp_path):
    sized = f"timm:resnet10t@{SIZE}"
    weights = random_weights(sized, tmp_path / "w.safetensors")
    fold = ["--protocol", "mela-vs-ben", "--fold", "r0f0"]
    out = cli("train", "--backbone", sized, "--weights", str(weights), *DATA, *fold, "--recipe", "cpu",
              "--epochs", "1", "--limit", "40")
    assert out.exit_code == 0, out.output
    out = cli("extract", "--backbone", sized, *DATA, *fold, "--store", str(tmp_path / "store"))
    assert out.exit_code == 0, out.output
    tuned = FeatureStore(tmp_path / "store").read("synthetic", sized, "ft-mela-vs-ben-r0f0")
    assert tuned.attrs["preprocessing"]["resize_mode"] == "shorter-side"  # trained and extracted on the same crops


@SLOW
def test_an_open_clip_tag_without_its_weights_says_where_to_get_them(bench_home):
    pytest.importorskip("open_clip", reason="the clip extra is not installed")
    with pytest.raises(BenchError) as error:
        plugins.get_backbone("open_clip:ViT-B-32/openai").create()
    said = str(error.value)
    assert "\n" not in said and "https://huggingface.co/timm/vit_base_patch32_clip_224.openai" in said
    assert str(bench_home / "weights" / "open_clip~ViT-B-32--openai.safetensors") in said
