"""ONNX export of a backbone's feature output, checked against torch and cached by the content of its weights."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from bench import paths
from bench.backbone import Backbone, Preprocessing, checkpoint_preprocessing
from bench.errors import BenchError

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

    The preprocessing defaults to the one saved in the checkpoint (fine-tunes may use another size), else the
    backbone's; a size asked for by name (`name@SIZE`) beats the checkpoint's. The cache key is (backbone, sha256 of the state dict, preprocessing), so exporting the same weights
    again returns the cached file without exporting.
    """
    if preprocessing is None:
        trained_at = weights and not backbone.size_fixed
        preprocessing = checkpoint_preprocessing(weights, backbone.preprocessing) if trained_at else backbone.preprocessing
    net = backbone.create(weights)
    identity = [backbone.name, state_dict_sha256(net), preprocessing.to_dict(), OPSET]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    path = paths.onnx_dir() / f"{backbone.name}-{key[:16]}.onnx"
    sidecar = path.with_suffix(".json")
    if sidecar.is_file() and path.is_file():
        meta = json.loads(sidecar.read_text())
        if meta["sha256"] == file_sha256(path):  # a damaged cache entry is exported again
            return _exported(path, meta, backbone, preprocessing, cached=True)
    meta = _export(net, backbone, preprocessing, path)
    meta["source"] = {"weights": str(weights), "sha256": file_sha256(Path(weights))} if weights else "initial weights"
    sidecar.write_text(json.dumps(meta, indent=2))  # written last: the entry counts only once the sidecar exists
    return _exported(path, meta, backbone, preprocessing, cached=False)


def _export(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
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
    try:
        diff = _parity(net, tmp, preprocessing, backbone.feature_dim)
    except BenchError:
        tmp.unlink()
        raise
    tmp.replace(path)
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


def _parity(net: nn.Module, model: Path, preprocessing: Preprocessing, feature_dim: int) -> float:
    """Max |onnx - torch| on a few image-like inputs, at a batch size other than the exported one."""
    import onnxruntime as ort

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
