"""ONNX export of a backbone's feature output, checked against torch and cached by the content of its weights."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

import bench
from bench import atomic, paths
from bench.backbone import Backbone, Preprocessing, checkpoint_preprocessing
from bench.digests import file_digest
from bench.errors import BenchError

if TYPE_CHECKING:  # torch and onnx are imported where a network is built: a re-run that finds its model does not
    import onnx  # pay for them
    from torch import nn

OPSET = 18
PARITY_RTOL = 1e-3  # bound on max |onnx - torch|, relative to the largest torch feature


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    sha256: str  # of the .onnx file: the identity feature sets record
    preprocessing: Preprocessing
    backbone: str
    feature_dim: int
    parity_max_abs_diff: float  # measured when the model was exported
    cached: bool  # found in the cache: this call exported nothing


def export_onnx(backbone: Backbone, weights: Path | None = None, preprocessing: Preprocessing | None = None,
                home: Path | None = None) -> ExportedModel:
    """The backbone with `weights` (else its initial weights) as ONNX with a dynamic batch axis, cached under
    `home` (default: the user's).

    From a weights file (a fine-tune, a source stage, --weights), a memo keyed by the file's content (its digest,
    cached by `bench.digests`) finds the model exported from it before without building the network, so a
    finished `bench extract` re-runs at once. Initial weights have no such key (a plugin may change them in code), so they are built and hashed.
    """
    cache = paths.onnx_dir(home or paths.home())
    if weights is None or not Path(weights).is_file():  # a missing file is reported by the checkpoint reader
        return _find_or_export(backbone, weights, preprocessing, cache)
    memo = _memo(backbone, Path(weights), preprocessing, cache)
    model = _remembered(memo, backbone)
    if model is None:
        model = _find_or_export(backbone, weights, preprocessing, cache)
        _remember(memo, model)
    return model


def _find_or_export(backbone: Backbone, weights: Path | None, preprocessing: Preprocessing | None,
                    cache: Path) -> ExportedModel:
    """The backbone with `weights` (else its initial weights) as ONNX with a dynamic batch axis.

    The preprocessing defaults to the one saved in the checkpoint (fine-tunes may use another size), else the
    backbone's; a size asked for by name (`name@SIZE`) beats the checkpoint's. The cache key is (backbone, sha256 of the state dict, preprocessing), so exporting the same weights
    again returns the cached file without exporting.
    """
    if preprocessing is None:
        trained_at = weights and not backbone.size_fixed
        preprocessing = checkpoint_preprocessing(weights, backbone.preprocessing) if trained_at else backbone.preprocessing
    net = backbone.create(weights)
    source = {"weights": str(weights), "sha256": file_digest(weights)} if weights else "initial weights"
    return export_module(net, backbone, preprocessing, source, cache)


def export_module(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, source: str | dict,
                  cache: Path | None = None) -> ExportedModel:
    """`net` as ONNX, cached by (backbone, sha256 of its state dict, preprocessing) in `cache` (default: the user's
    ONNX cache): a backbone's network, or a part of one standing as its own backbone (a trunk, bench.train.trunk).
    `source` says where its weights came from."""
    cache = cache or paths.onnx_dir(paths.home())
    identity = [backbone.name, state_dict_sha256(net), preprocessing.to_dict(), OPSET]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    path = cache / f"{backbone.name}-{key[:16]}.onnx"
    sidecar = path.with_suffix(".json")
    meta = _cached_meta(sidecar, path)
    if meta is not None:
        return _exported(path, meta, backbone, preprocessing, cached=True)
    meta = export_network(net, backbone, preprocessing, path)
    meta["source"] = source
    atomic.write_text(sidecar, json.dumps(meta, indent=2))  # written last: the entry counts only once it exists
    return _exported(path, meta, backbone, preprocessing, cached=False)


def _cached_meta(sidecar: Path, model: Path) -> dict | None:
    """The sidecar of a sound cache entry; None for a missing, torn or foreign one (it is exported again)."""
    try:
        meta = json.loads(sidecar.read_text())
        return meta if meta["sha256"] == file_digest(model) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_network(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, path: Path) -> dict:
    """`net` as ONNX at `path`, checked against torch (bench.testing checks plugins with it); its metadata. The
    graph is the cached one of its architecture and size, with the net's weights put in, where it can be (`_graph`)."""
    import onnx
    import torch

    graph, graph_path = _graph(net, backbone, preprocessing, path.parent / "graphs")
    if graph_path:  # a graph exported without a cache holds the net's weights already
        _put_weights(graph, net)
    graph = _optimised(graph)
    with atomic.atomic_path(path) as tmp:  # a model that fails its parity check never reaches the cache
        onnx.save(graph, tmp)
        diff = _parity(net, tmp, preprocessing, backbone.feature_dim)
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


def _graph(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing,
           graphs: Path) -> tuple[onnx.ModelProto, Path | None]:
    """The network's ONNX graph at the preprocessing's size, and the file it is cached in (in `graphs`).

    A graph depends on the architecture and the input size, not on the weights, so it is exported once per
    architecture and size (seconds to tens of seconds) and every further model of it is this graph with its own
    weights (a fraction of a second). It is cached only where every tensor of the state dict is an initializer
    of the same name, shape and type, and the graph given other weights still matches torch given them (no weight
    was folded into a constant); otherwise the graph is exported with the model's own weights every time.
    """
    import onnx

    cached = graphs / f"{architecture_key(net, preprocessing.size)}.onnx"
    if cached.is_file():
        try:
            return onnx.load(cached), cached
        except Exception:  # noqa: BLE001 (a truncated or damaged file of any kind is exported again)
            cached.unlink()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    _torch_export(net, backbone, preprocessing.size, tmp)
    graph = onnx.load(tmp)
    tmp.unlink()
    if not (_every_weight_named(graph, net) and _takes_other_weights(graph, net, preprocessing, tmp)):
        return graph, None
    names = set(_weights(net))
    for init in graph.graph.initializer:  # the cache holds the graph alone: no weights to read back, or to copy
        if init.name in names:
            init.ClearField("raw_data")
    onnx.save(graph, tmp)
    tmp.replace(cached)  # atomic: two processes exporting the same graph each leave a whole file
    return graph, cached


def _optimised(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its weights in, constant-folded by onnxscript's optimiser: BatchNorm folded into the
    convolutions and the 'same' padding's shape arithmetic resolved. onnxruntime does not do all of this when it
    loads a model: EfficientNet-Lite0 at 224 px left as exported (544 nodes) ran at 91 images/s on 2 cores,
    optimised (93 nodes) at 305, for 0.2 s of optimising."""
    from onnxscript import optimizer

    return optimizer.optimize(graph)


def _takes_other_weights(graph: onnx.ModelProto, net: nn.Module, preprocessing: Preprocessing, tmp: Path) -> bool:
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
    _put_weights(probe, other)
    onnx.save(probe, tmp)
    try:
        _parity(other, tmp, preprocessing, None)
        return True
    except BenchError:
        return False
    finally:
        tmp.unlink()


def _torch_export(net: nn.Module, backbone: Backbone, size: int, path: Path) -> None:
    """The dynamo exporter, torch's supported path; the input size is fixed, so 'same' padding becomes constant.

    optimize=False keeps every weight an initializer named after its state-dict entry, so that other weights can
    be put in; `_optimised` folds them afterwards.
    external_data=False keeps the weights inside the one file whose sha256 identifies the model."""
    import torch


    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter about its internals, nothing the user can act on
            torch.onnx.export(
                net, (torch.zeros(2, 3, size, size),), path, input_names=["images"], output_names=["features"],
                dynamo=True, optimize=False, external_data=False, opset_version=OPSET, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as exc:  # torch.export / onnxscript raise many types, with pages of diagnostics
        raise BenchError(f"torch cannot export {backbone.name} to ONNX: {str(exc).splitlines()[0]}") from exc


def architecture_key(net: nn.Module, size: int) -> str:
    """What an exported graph depends on: the module tree (classes and their settings), the state dict's names,
    shapes and types, the input size and the exporter's versions; not the weights' values."""
    import onnx
    import torch


    tensors = [(k, str(v.dtype), tuple(v.shape)) for k, v in net.state_dict().items()]
    identity = [type(net).__module__, type(net).__qualname__, repr(net), tensors, size, OPSET, torch.__version__,
                onnx.__version__]
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]


def _every_weight_named(graph: onnx.ModelProto, net: nn.Module) -> bool:
    """Whether every tensor of the net is an initializer of the same name, shape and type, held as raw bytes."""
    from onnx import helper


    initializers = {t.name: t for t in graph.graph.initializer}
    for name, tensor in _weights(net).items():
        init = initializers.get(name)
        if (init is None or not init.HasField("raw_data") or tuple(init.dims) != tensor.shape
                or helper.tensor_dtype_to_np_dtype(init.data_type) != tensor.dtype):
            return False
    return True


def _put_weights(graph: onnx.ModelProto, net: nn.Module) -> None:
    """Give the initializers named after the net's state-dict entries the net's values, in place (little-endian
    raw bytes, as ONNX stores them)."""
    weights = _weights(net)
    for init in graph.graph.initializer:
        if init.name in weights:
            init.raw_data = weights[init.name].astype(weights[init.name].dtype.newbyteorder("<"), copy=False).tobytes()


def _weights(net: nn.Module) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays, less BatchNorm's step counters (training bookkeeping no graph uses)."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _parity(net: nn.Module, model: Path, preprocessing: Preprocessing, feature_dim: int | None) -> float:
    """Max |onnx - torch| on a few image-like inputs, at a batch size other than the exported one (and the
    features' shape checked against `feature_dim` where given)."""
    import onnxruntime as ort
    import torch

    x = preprocessing.normalise(sample_images(3, preprocessing.size))
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


def state_dict_sha256(net: nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _exported(path: Path, meta: dict, backbone: Backbone, preprocessing: Preprocessing, cached: bool) -> ExportedModel:
    return ExportedModel(
        path=path,
        sha256=meta["sha256"],
        preprocessing=preprocessing,
        backbone=backbone.name,
        feature_dim=backbone.feature_dim,
        parity_max_abs_diff=meta["parity_max_abs_diff"],
        cached=cached,
    )


# --- the memo: a weights file -> the model exported from it -------------------------------------------------------

def _memo(backbone: Backbone, weights: Path, preprocessing: Preprocessing | None, cache: Path) -> Path:
    """The memo file of an export from a weights file. Its key is what decides the model without building the
    network: the weights file's content digest, and the backbone's declaration and code version (bench's, and its
    plugin distribution's); like the content cache, it does not see code edited in place."""
    try:
        plugin_version = version(backbone.plugin)
    except (PackageNotFoundError, ValueError):  # a built-in, or a study's own backbone
        plugin_version = None
    identity = [backbone.name, backbone.architecture, backbone.feature_dim, backbone.preprocessing.to_dict(),
                backbone.plugin, plugin_version, bench.__version__, file_digest(weights),
                preprocessing.to_dict() if preprocessing else None, OPSET]
    key = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()
    return cache / "memo" / f"{backbone.name}-{key[:16]}.json"


def _remembered(memo: Path, backbone: Backbone) -> ExportedModel | None:
    """The model the memo names, if it and its sidecar are there unchanged since (a changed file is exported again)."""
    try:
        entry = json.loads(memo.read_text())
        path = Path(entry["path"])
        meta = json.loads(path.with_suffix(".json").read_text())
        if file_digest(path) != meta["sha256"]:  # the model file changed since
            return None
    except (OSError, ValueError, KeyError):
        return None
    return _exported(path, meta, backbone, Preprocessing.from_dict(meta["preprocessing"]), cached=True)


def _remember(memo: Path, model: ExportedModel) -> None:
    # atomic: a concurrent run reads the old memo or the new one, never half of one
    atomic.write_text(memo, json.dumps({"path": str(model.path)}))
