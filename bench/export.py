"""ONNX export of a backbone's feature output, checked against torch and cached by the content of its weights."""

from __future__ import annotations

import hashlib
import json
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
from bench.errors import BenchError

if TYPE_CHECKING:  # torch is imported where a network is built: a re-run that finds its model does not pay for it
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


def export_onnx(backbone: Backbone, weights: Path | None = None, preprocessing: Preprocessing | None = None) -> ExportedModel:
    """The backbone with `weights` (else its initial weights) as ONNX with a dynamic batch axis.

    From a weights file (a fine-tune, a source stage, --weights), a memo keyed by the file finds the model exported
    from it before without building the network or hashing its weights, so a finished `bench extract` re-runs at
    once. Initial weights have no such key (a plugin may change them in code), so they are built and hashed.
    """
    if weights is None or not Path(weights).is_file():  # a missing file is reported by the checkpoint reader
        return _find_or_export(backbone, weights, preprocessing)
    memo = _memo(backbone, Path(weights), preprocessing)
    model = _remembered(memo, backbone)
    if model is None:
        model = _find_or_export(backbone, weights, preprocessing)
        _remember(memo, model)
    return model


def _find_or_export(backbone: Backbone, weights: Path | None, preprocessing: Preprocessing | None) -> ExportedModel:
    """The backbone with `weights` (else its initial weights) as ONNX with a dynamic batch axis.

    The preprocessing defaults to the one saved in the checkpoint (fine-tunes may use another size), else the
    backbone's. The cache key is (backbone, sha256 of the state dict, preprocessing), so exporting the same weights
    again returns the cached file without exporting.
    """
    if preprocessing is None:
        preprocessing = checkpoint_preprocessing(weights, backbone.preprocessing) if weights else backbone.preprocessing
    net = backbone.create(weights)
    identity = [backbone.name, state_dict_sha256(net), preprocessing.to_dict(), OPSET]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    path = paths.onnx_dir() / f"{backbone.name}-{key[:16]}.onnx"
    sidecar = path.with_suffix(".json")
    meta = _cached_meta(sidecar, path)
    if meta is not None:
        return _exported(path, meta, backbone, preprocessing, cached=True)
    meta = export_network(net, backbone, preprocessing, path)
    meta["source"] = {"weights": str(weights), "sha256": file_sha256(Path(weights))} if weights else "initial weights"
    atomic.write_text(sidecar, json.dumps(meta, indent=2))  # written last: the entry counts only once it exists
    return _exported(path, meta, backbone, preprocessing, cached=False)


def _cached_meta(sidecar: Path, model: Path) -> dict | None:
    """The sidecar of a sound cache entry; None for a missing, torn or foreign one (it is exported again)."""
    try:
        meta = json.loads(sidecar.read_text())
        return meta if meta["sha256"] == file_sha256(model) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_network(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, path: Path) -> dict:
    """`net` as ONNX at `path`, checked against torch (bench.testing checks plugins with it); its metadata."""
    import onnx
    import torch

    with atomic.atomic_path(path) as tmp:
        diff = _export_to(net, backbone, preprocessing, tmp)
    return {
        "backbone": backbone.name,
        "feature_dim": backbone.feature_dim,
        "preprocessing": preprocessing.to_dict(),
        "sha256": file_sha256(path),
        "opset": OPSET,
        "parity_max_abs_diff": diff,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


def _export_to(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, tmp: Path) -> float:
    """Export to `tmp` and check it against torch; the max |onnx - torch|."""
    import torch

    size = preprocessing.size
    # the dynamo exporter: torch's supported path; the input size is fixed, so 'same' padding becomes constant.
    # external_data=False keeps the weights inside the one file whose sha256 identifies the model.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter about its internals, nothing the user can act on
            torch.onnx.export(
                net, (torch.zeros(2, 3, size, size),), tmp, input_names=["images"], output_names=["features"],
                dynamo=True, external_data=False, opset_version=OPSET, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as exc:  # torch.export / onnxscript raise many types, with pages of diagnostics
        raise BenchError(f"torch cannot export {backbone.name} to ONNX: {str(exc).splitlines()[0]}") from exc
    return _parity(net, tmp, preprocessing, backbone.feature_dim)


def _parity(net: nn.Module, model: Path, preprocessing: Preprocessing, feature_dim: int) -> float:
    """Max |onnx - torch| on a few image-like inputs, at a batch size other than the exported one."""
    import onnxruntime as ort
    import torch

    x = preprocessing.normalise(sample_images(3, preprocessing.size))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    if expected.shape != (3, feature_dim):
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
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

def _memo(backbone: Backbone, weights: Path, preprocessing: Preprocessing | None) -> Path:
    """The memo file of an export from a weights file. Its key is what decides the model without reading the
    weights: the file's path, inode, size and modification time, and the backbone's declaration and code version
    (bench's, and its plugin distribution's); like the content cache, it does not see code edited in place."""
    try:
        plugin_version = version(backbone.plugin)
    except (PackageNotFoundError, ValueError):  # a built-in, or a study's own backbone
        plugin_version = None
    identity = [backbone.name, backbone.architecture, backbone.feature_dim, backbone.preprocessing.to_dict(),
                backbone.plugin, plugin_version, bench.__version__, _file_identity(weights),
                preprocessing.to_dict() if preprocessing else None, OPSET]
    key = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()
    return paths.onnx_dir() / "memo" / f"{backbone.name}-{key[:16]}.json"


def _file_identity(path: Path) -> list:
    stat = path.stat()  # bench writes a file anew (a new inode) by renaming: a rewrite changes the inode too
    return [str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _remembered(memo: Path, backbone: Backbone) -> ExportedModel | None:
    """The model the memo names, if it and its sidecar are there unchanged since (a changed file is exported again)."""
    try:
        entry = json.loads(memo.read_text())
        path = Path(entry["path"])
        meta = json.loads(path.with_suffix(".json").read_text())
        if _file_identity(path) != entry["file"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return _exported(path, meta, backbone, Preprocessing.from_dict(meta["preprocessing"]), cached=True)


def _remember(memo: Path, model: ExportedModel) -> None:
    # atomic: a concurrent run reads the old memo or the new one, never half of one
    atomic.write_text(memo, json.dumps({"path": str(model.path), "file": _file_identity(model.path)}))
