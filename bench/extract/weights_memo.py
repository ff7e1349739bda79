"""The weights-file memo: a weights file (by its content digest) -> the ONNX model exported from it, so that a
finished `bench extract` re-runs at once, without building the network to hash its state dict.

Its key is what decides the model without building the network: the weights file's content digest (cached by
`bench.digests`), and the backbone's declaration and code version (bench's, and its plugin distribution's); like
the model cache, it does not see code edited in place."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import bench
from bench import atomic, paths
from bench.backbone import Backbone, Preprocessing
from bench.digests import file_digest
from bench.extract.graph_cache import OPSET
from bench.extract.model_cache import ExportedModel, exported_model


def memo_path(backbone: Backbone, weights: Path, preprocessing: Preprocessing | None, cache: Path) -> Path:
    """The memo file of an export of `backbone` from `weights` (with `preprocessing`, else the checkpoint's)."""
    try:
        plugin_version = version(backbone.plugin)
    except (PackageNotFoundError, ValueError):  # a built-in, or a study's own backbone
        plugin_version = None
    identity = [backbone.name, backbone.architecture, backbone.feature_dim, backbone.preprocessing.to_dict(),
                backbone.plugin, plugin_version, bench.__version__, file_digest(weights),
                preprocessing.to_dict() if preprocessing else None, OPSET]
    key = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()
    return cache / "memo" / f"{paths.backbone_part(backbone.name)}-{key[:16]}.json"


def remembered(memo: Path, backbone: Backbone) -> ExportedModel | None:
    """The model the memo names, if it and its sidecar are there unchanged since (a changed file is exported again)."""
    try:
        entry = json.loads(memo.read_text())
        path = Path(entry["path"])
        meta = json.loads(path.with_suffix(".json").read_text())
        if file_digest(path) != meta["sha256"]:  # the model file changed since
            return None
    except (OSError, ValueError, KeyError):
        return None
    return exported_model(path, meta, backbone, Preprocessing.from_dict(meta["preprocessing"]), cached=True)


def remember(memo: Path, model: ExportedModel) -> None:
    # atomic: a concurrent run reads the old memo or the new one, never half of one
    atomic.write_text(memo, json.dumps({"path": str(model.path)}))
