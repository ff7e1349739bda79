"""ONNX export of a backbone's feature output, checked against torch (the parity check), through three caches:
the weights-file memo (`weights_memo`: a weights file -> its model, without building the network), the model cache
(`model_cache`: a network's model by the content of its weights) and the graph cache (`graph_cache`: an
architecture's graph at an input size, into which each model's weights are put)."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench import atomic, paths
from bench.backbone import Backbone, Checkpoint, Preprocessing
from bench.digests import file_digest
from bench.errors import BenchError
from bench.extract import graph_cache, model_cache, weights_memo
from bench.extract.graph_cache import OPSET
from bench.extract.model_cache import ExportedModel

if TYPE_CHECKING:  # torch and onnx are imported where a network is built: a re-run that finds its model does not
    import onnx  # pay for them
    from torch import nn

PARITY_RTOL = 1e-3  # bound on max |onnx - torch|, relative to the largest torch feature


def export_onnx(backbone: Backbone, weights: Path | Checkpoint | None = None,
                preprocessing: Preprocessing | None = None, home: Path | None = None) -> ExportedModel:
    """The backbone with `weights` (a file, or a checkpoint already read; else its initial weights) as ONNX with a
    dynamic batch axis, cached under `home` (default: the user's). The checkpoint is read at most once.

    From a weights file (a fine-tune, a source stage, --weights), the weights-file memo finds the model exported
    from it before without building the network, so a finished `bench extract` re-runs at once. Initial weights
    have no such key (a plugin may change them in code), so they are built and hashed.
    """
    cache = paths.onnx_dir(home or paths.home())
    checkpoint = Checkpoint.of(weights) if weights is not None else None
    if checkpoint is None or not checkpoint.path.is_file():  # a missing file is reported by the checkpoint reader
        return _find_or_export(backbone, checkpoint, preprocessing, cache)
    memo = weights_memo.memo_path(backbone, checkpoint.path, preprocessing, cache)
    model = weights_memo.remembered(memo, backbone)
    if model is None:
        model = _find_or_export(backbone, checkpoint, preprocessing, cache)
        weights_memo.remember(memo, model)
    return model


def _find_or_export(backbone: Backbone, checkpoint: Checkpoint | None, preprocessing: Preprocessing | None,
                    cache: Path) -> ExportedModel:
    """The backbone with the checkpoint's weights (else its initial weights) as ONNX with a dynamic batch axis.

    The preprocessing defaults to the one saved in the checkpoint (fine-tunes may use another size), else the
    backbone's; a size asked for by name (`name@SIZE`) beats the checkpoint's.
    """
    if preprocessing is None:
        trained_at = checkpoint and not backbone.size_fixed
        preprocessing = checkpoint.preprocessing(backbone.preprocessing) if trained_at else backbone.preprocessing
    net = backbone.create(checkpoint)
    source = ({"weights": str(checkpoint.path), "sha256": file_digest(checkpoint.path)} if checkpoint
              else "initial weights")
    return export_module(net, backbone, preprocessing, source, cache)


def export_module(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, source: str | dict,
                  cache: Path | None = None, input_shape: tuple[int, ...] | None = None) -> ExportedModel:
    """`net` as ONNX, found in or entered into the model cache `cache` (default: the user's ONNX cache): a
    backbone's network, or a part of one standing as its own backbone (a trunk or a top, bench.train.trunk).
    `source` says where its weights came from. `input_shape` (one input's): for a net that takes no image at the
    preprocessing's size (a top takes a trunk's activations), whose parity check then runs on seeded normal inputs."""
    cache = cache or paths.onnx_dir(paths.home())
    path = model_cache.model_path(net, backbone, preprocessing, cache)
    found = model_cache.find(path, backbone, preprocessing)
    if found is not None:
        return found
    meta = export_network(net, backbone, preprocessing, path, input_shape)
    meta["source"] = source
    return model_cache.keep(path, meta, backbone, preprocessing)


def export_network(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, path: Path,
                   input_shape: tuple[int, ...] | None = None) -> dict:
    """`net` as ONNX at `path`, checked against torch (bench.testing checks plugins with it); its metadata. The
    graph is the cached one of its architecture and input size, with the net's weights put in, where it can be
    (`_graph`). `input_shape`: as for `export_module`."""
    import onnx
    import torch

    inputs = Inputs(preprocessing, input_shape)
    graph, graph_path = _graph(net, backbone, inputs, path.parent / "graphs")
    if graph_path:  # a graph exported without a cache holds the net's weights already
        graph_cache.put_weights(graph, net)
    graph = _optimised(graph)
    with atomic.atomic_path(path) as tmp:  # a model that fails its parity check never reaches the cache
        onnx.save(graph, tmp)
        diff = _parity(net, tmp, inputs, backbone.feature_dim)
    return {
        "backbone": backbone.name,
        "feature_dim": backbone.feature_dim,
        "preprocessing": preprocessing.to_dict(),
        "sha256": file_digest(path),
        "opset": OPSET,
        "parity_max_abs_diff": diff,
        "graph": graph_path.name if graph_path else None,  # the cached graph its weights were put into, if any
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


@dataclass(frozen=True)
class Inputs:
    """What an exported network takes: images at the preprocessing's size, or inputs of `shape` (one input's)."""

    preprocessing: Preprocessing
    shape: tuple[int, ...] | None = None

    @property
    def size(self) -> int | tuple[int, ...]:
        """What the graph depends on (graph_cache.architecture_key): the input's shape, or for an image its side,
        which keeps the keys of the graphs cached before other inputs could be exported."""
        return self.shape or self.preprocessing.size

    @property
    def one(self) -> tuple[int, ...]:
        """One input's shape."""
        return self.shape or (3, self.preprocessing.size, self.preprocessing.size)

    def example(self, n: int) -> np.ndarray:
        """`n` inputs for the parity check: image-like ones (`sample_images`), normalised, or seeded normal ones."""
        if self.shape is None:
            return self.preprocessing.normalise(sample_images(n, self.preprocessing.size))
        return np.random.default_rng(0).standard_normal((n, *self.shape), dtype=np.float32)


def _graph(net: nn.Module, backbone: Backbone, inputs: Inputs,
           graphs: Path) -> tuple[onnx.ModelProto, Path | None]:
    """The network's ONNX graph at its input size, and the file it is cached in (in `graphs`).

    The graph cache keeps a graph only where every tensor of the state dict is an initializer of the same name,
    shape and type, and the graph given other weights still matches torch given them (no weight was folded into a
    constant); otherwise the graph is exported with the model's own weights every time.
    """
    import onnx

    cached = graph_cache.graph_path(net, inputs.size, graphs)
    graph = graph_cache.read(cached)
    if graph is not None:
        return graph, cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    _torch_export(net, backbone, inputs.one, tmp)
    graph = onnx.load(tmp)
    tmp.unlink()
    if not (graph_cache.takes_weights(graph, net) and _takes_other_weights(graph, net, inputs, tmp)):
        return graph, None
    graph_cache.keep(graph, net, cached)
    return graph, cached


def _optimised(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its weights in, constant-folded by onnxscript's optimiser: BatchNorm folded into the
    convolutions and the 'same' padding's shape arithmetic resolved. onnxruntime does not do all of this when it
    loads a model: EfficientNet-Lite0 at 224 px left as exported (544 nodes) ran at 91 images/s on 2 cores,
    optimised (93 nodes) at 305, for 0.2 s of optimising."""
    from onnxscript import optimizer

    return optimizer.optimize(graph)


def _takes_other_weights(graph: onnx.ModelProto, net: nn.Module, inputs: Inputs, tmp: Path) -> bool:
    """Whether the graph with every tensor of the net scaled (a seeded 0-50% up) still computes what torch does."""
    import onnx
    import torch

    other = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in other.state_dict().values():
            if tensor.is_floating_point():  # scaled up, so BatchNorm's variances stay positive
                tensor.mul_(1 + 0.5 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    graph_cache.put_weights(probe, other)
    onnx.save(probe, tmp)
    try:
        _parity(other, tmp, inputs, None)
        return True
    except BenchError:
        return False
    finally:
        tmp.unlink()


def _torch_export(net: nn.Module, backbone: Backbone, shape: tuple[int, ...], path: Path) -> None:
    """The dynamo exporter, torch's supported path; one input's `shape` is fixed, so 'same' padding becomes
    constant.

    optimize=False keeps every weight an initializer named after its state-dict entry, so that other weights can
    be put in; `_optimised` folds them afterwards.
    external_data=False keeps the weights inside the one file whose sha256 identifies the model."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter about its internals, nothing the user can act on
            torch.onnx.export(
                net, (torch.zeros(2, *shape),), path, input_names=["images"], output_names=["features"],
                dynamo=True, optimize=False, external_data=False, opset_version=OPSET, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as exc:  # torch.export / onnxscript raise many types, with pages of diagnostics
        raise BenchError(f"torch cannot export {backbone.name} to ONNX: {str(exc).splitlines()[0]}") from exc


def _parity(net: nn.Module, model: Path, inputs: Inputs, feature_dim: int | None) -> float:
    """Max |onnx - torch| on a few of the net's example inputs, at a batch size other than the exported one (and
    the features' shape checked against `feature_dim` where given)."""
    import onnxruntime as ort
    import torch

    x = inputs.example(3)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    if feature_dim is not None and expected.shape != (3, feature_dim):
        raise BenchError(f"the network maps 3 images to features of shape {expected.shape}, not (3, {feature_dim}) as "
                         "its backbone declares: fix the plugin's feature_dim or its feature layer")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x})[0]
    diff = float(np.abs(got - expected).max())
    bound = PARITY_RTOL * float(np.abs(expected).max()) + 1e-6
    if not diff <= bound:
        raise BenchError(f"the ONNX export of this network does not match torch (max |onnx - torch| = {diff:.3g}, "
                         f"bound {bound:.3g}): the network uses an operation the exporter gets wrong")
    return diff


def sample_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs with noise, uint8 (n, size, size, 3): closer to photographs than white noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        noise = rng.normal(0, 8, (size, size, 3))
        images.append(np.clip(np.asarray(coarse, np.float32) + noise, 0, 255).astype(np.uint8))
    return np.stack(images)
