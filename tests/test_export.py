"""ONNX export: parity with torch at any batch size, the sidecar, the content cache, checkpoint preprocessing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import tiny_extraction as tiny
from bench.extract import export, graph_cache, model_cache
from bench.backbone import Preprocessing, save_checkpoint
from bench.errors import BenchError
from bench.digests import file_sha256
from bench.extract.export import export_onnx, sample_images


def torch_features(net: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(images)).numpy()


def onnx_features(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_export_matches_torch_at_any_batch_size_and_records_its_provenance(bench_home):
    backbone = tiny.backbone()
    model = export_onnx(backbone)

    assert model.path.parent == bench_home / "onnx" and model.sha256 == file_sha256(model.path)
    assert not model.cached and model.preprocessing == backbone.preprocessing
    net = backbone.create()
    for n in (1, 5):
        x = backbone.preprocessing.normalise(sample_images(n, 32, seed=n))
        np.testing.assert_allclose(onnx_features(model.path, x), torch_features(net, x), atol=1e-5)
    assert 0 <= model.parity_max_abs_diff < 1e-5

    sidecar = json.loads(model.path.with_suffix(".json").read_text())
    assert sidecar["backbone"] == tiny.NAME and sidecar["sha256"] == model.sha256
    assert sidecar["preprocessing"]["size"] == 32 and sidecar["source"] == "initial weights"
    assert sidecar["opset"] == export.OPSET and sidecar["torch"] == torch.__version__ and sidecar["onnx"]


def test_the_same_weights_are_exported_once(monkeypatch):
    first = export_onnx(tiny.backbone())
    monkeypatch.setattr(graph_cache, "put_weights", lambda *a: pytest.fail("made again"))
    again = export_onnx(tiny.backbone())
    assert again.cached and (again.path, again.sha256) == (first.path, first.sha256)


def test_further_weights_go_into_the_cached_graph_without_exporting_again(monkeypatch, tmp_path):
    first = export_onnx(tiny.backbone())
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported again"))
    net = tiny.backbone().create()
    with torch.no_grad():  # other parameters and other BatchNorm statistics: every tensor must reach the graph
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.5 * torch.rand(tensor.shape))
    model = export_onnx(tiny.backbone(), save_checkpoint(tmp_path / "ft.pt", net, tiny.NAME, Preprocessing(size=32)))

    assert not model.cached and model.sha256 != first.sha256
    x = model.preprocessing.normalise(sample_images(4, 32, seed=3))
    np.testing.assert_allclose(onnx_features(model.path, x), torch_features(net, x), atol=1e-5)
    sidecars = [json.loads(m.path.with_suffix(".json").read_text()) for m in (first, model)]
    assert sidecars[0]["graph"] == sidecars[1]["graph"] and sidecars[1]["parity_max_abs_diff"] < 1e-5
    for exported in (first, model):  # folded once the weights are in: left as exported, Lite0 ran 3x slower
        assert "BatchNormalization" not in {node.op_type for node in onnx.load(exported.path).graph.node}


class UnusedWeight(nn.Module):
    """A weight the forward never reads is no initializer of the graph, so the graph cannot be reused."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same weights at every build
            self.conv, self.unused = nn.Conv2d(3, 4, 3), nn.Linear(2, 2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_a_graph_that_does_not_name_every_weight_is_exported_with_each_model(bench_home):
    backbone = dataclasses.replace(tiny.backbone(), feature_dim=4, build=UnusedWeight, load_initial=None)
    model = export_onnx(backbone)
    assert json.loads(model.path.with_suffix(".json").read_text())["graph"] is None
    assert not list((bench_home / "onnx" / "graphs").glob("*.onnx"))
    x = model.preprocessing.normalise(sample_images(2, 32))
    np.testing.assert_allclose(onnx_features(model.path, x), torch_features(backbone.create(), x), atol=1e-5)


def test_a_damaged_cache_entry_is_exported_again():
    first = export_onnx(tiny.backbone())
    first.path.write_bytes(b"truncated")
    again = export_onnx(tiny.backbone())
    assert not again.cached and again.sha256 == first.sha256 == file_sha256(again.path)


def test_a_checkpoint_brings_its_weights_and_preprocessing(tmp_path):
    backbone = tiny.backbone()
    net = backbone.create()
    with torch.no_grad():
        net[0].weight.mul_(2)
    checkpoint = save_checkpoint(tmp_path / "ft.pt", net, tiny.NAME, Preprocessing(size=48))

    model = export_onnx(backbone, checkpoint)
    assert model.preprocessing.size == 48 and model.sha256 != export_onnx(backbone).sha256
    x = model.preprocessing.normalise(sample_images(2, 48))
    np.testing.assert_allclose(onnx_features(model.path, x), torch_features(net, x), atol=1e-5)
    source = json.loads(model.path.with_suffix(".json").read_text())["source"]
    assert source == {"weights": str(checkpoint), "sha256": file_sha256(checkpoint)}


class ExportsDifferently(nn.Module):
    """Computes something else while being exported: the parity check must catch it."""

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        return pooled * 2 if torch.compiler.is_exporting() else pooled


class FoldsAWeight(nn.Module):
    """Every weight is an initializer, but the exported graph also holds a copy of one taken at build time."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)
        self.copy = self.conv.bias.detach().clone()  # a plain attribute: no weight, and not in the state dict

    def forward(self, x):
        bias = self.copy if torch.compiler.is_exporting() else self.conv.bias
        return self.conv(x).mean(dim=(2, 3)) + bias


def test_a_graph_holding_a_copy_of_a_weight_is_not_reused(bench_home):
    backbone = dataclasses.replace(tiny.backbone(), feature_dim=4, build=FoldsAWeight, load_initial=None)
    model = export_onnx(backbone)  # right for these weights, wrong for any others
    assert json.loads(model.path.with_suffix(".json").read_text())["graph"] is None
    assert not list((bench_home / "onnx" / "graphs").glob("*.onnx"))


def test_an_export_that_differs_from_torch_is_refused(bench_home):
    backbone = dataclasses.replace(tiny.backbone(), feature_dim=3, build=ExportsDifferently, load_initial=None)
    with pytest.raises(BenchError, match=r"does not match torch \(max \|onnx - torch\| = "):
        export_onnx(backbone)
    assert not list((bench_home / "onnx").glob("*.onnx"))


def test_a_wrong_feature_dim_is_reported():
    with pytest.raises(BenchError, match=r"features of shape \(3, 16\), not \(3, 8\)"):
        export_onnx(dataclasses.replace(tiny.backbone(), feature_dim=8))


def test_a_model_exported_from_a_weights_file_is_found_again_without_building_the_network(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "ft.pt", tiny.backbone().create(), tiny.NAME, Preprocessing(size=32))
    first = export_onnx(tiny.backbone(), checkpoint)
    unbuildable = dataclasses.replace(tiny.backbone(), build=lambda: pytest.fail("built the network"))
    monkeypatch.setattr(model_cache, "state_dict_sha256", lambda net: pytest.fail("hashed the weights"))
    again = export_onnx(unbuildable, checkpoint)
    assert again.cached and (again.path, again.sha256, again.preprocessing) == (first.path, first.sha256,
                                                                                first.preprocessing)


def test_a_rewritten_weights_file_is_exported_again(tmp_path):
    backbone = tiny.backbone()
    net = backbone.create()
    checkpoint = save_checkpoint(tmp_path / "ft.pt", net, tiny.NAME, Preprocessing(size=32))
    first = export_onnx(backbone, checkpoint)
    with torch.no_grad():
        net[0].weight.mul_(2)
    save_checkpoint(checkpoint, net, tiny.NAME, Preprocessing(size=32))  # a fine-tune run again, other weights
    again = export_onnx(backbone, checkpoint)
    assert not again.cached and again.sha256 != first.sha256
