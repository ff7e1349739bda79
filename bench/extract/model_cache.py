"""The model cache: exported ONNX models by content (backbone, sha256 of the state dict, preprocessing, opset),
so that exporting the same weights again exports nothing. Each model file has a JSON sidecar, written last: an
entry counts only once its sidecar is there and names the model file's digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import atomic, paths
from bench.backbone import Backbone, Preprocessing
from bench.digests import file_digest
from bench.extract.graph_cache import OPSET

if TYPE_CHECKING:  # torch is imported where a network is hashed
    from torch import nn


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    sha256: str  # of the .onnx file: the identity feature sets record
    preprocessing: Preprocessing
    backbone: str
    feature_dim: int
    parity_max_abs_diff: float  # measured when the model was exported
    cached: bool  # found in the cache: this call exported nothing


def model_path(net: nn.Module, backbone: Backbone, preprocessing: Preprocessing, cache: Path) -> Path:
    """The file in `cache` that holds `net` exported for `backbone` with `preprocessing`."""
    identity = [backbone.name, state_dict_sha256(net), preprocessing.to_dict(), OPSET]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return cache / f"{paths.backbone_part(backbone.name)}-{key[:16]}.onnx"


def find(path: Path, backbone: Backbone, preprocessing: Preprocessing) -> ExportedModel | None:
    """The model kept at `path`; None for a missing, torn or foreign entry (it is exported again)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta["sha256"] != file_digest(path):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return exported_model(path, meta, backbone, preprocessing, cached=True)


def keep(path: Path, meta: dict, backbone: Backbone, preprocessing: Preprocessing) -> ExportedModel:
    """Enter the model just exported to `path` (described by `meta`) into the cache."""
    atomic.write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))  # last: the entry counts from now
    return exported_model(path, meta, backbone, preprocessing, cached=False)


def exported_model(path: Path, meta: dict, backbone: Backbone, preprocessing: Preprocessing,
                   cached: bool) -> ExportedModel:
    """The model at `path` as its sidecar `meta` describes it."""
    return ExportedModel(
        path=path,
        sha256=meta["sha256"],
        preprocessing=preprocessing,
        backbone=backbone.name,
        feature_dim=backbone.feature_dim,
        parity_max_abs_diff=meta["parity_max_abs_diff"],
        cached=cached,
    )


def state_dict_sha256(net: nn.Module) -> str:
    """sha256 over the state dict's names, types, shapes and bytes: the weights' identity."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
