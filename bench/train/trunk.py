"""A backbone cut into a frozen trunk and a trainable top, and the trunk's activations of a pool of augmented views
in the feature store, so that a recipe training only the top (`views`, bench.train.top) runs the trunk once per view.

The cut for `train_last = K` is the latest of the backbone's cut points (`Backbone.chain`) that leaves the last K
parameterised layers in the top, moved back over modules without weights (activations, dropout, pooling): those
then run in the top, in training mode, as they do when the whole network trains with the same layers frozen.

A trunk set sits beside the feature sets, at `/{dataset}/{backbone}/trunk-{cut}-{size}px-{V}v-s{seed}-{digest}`:
one row per image holding its V views' activations (V x C x H x W, flattened), float16 to halve a pool's bytes.
The digest is of the trunk's weights and the preprocessing: a set is never reused for another trunk or pool.
View 0 is the image as it is; view v > 0 is the training augmentation (bench.train.loop.transform) with draws
`torch.rand(n, V - 1, 3)[image, v - 1]` of a generator seeded with `seed`, drawn ahead for the whole manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

import bench
from bench import paths
from bench.backbone import Backbone, Preprocessing
from bench.dataset import image_digests
from bench.errors import BenchError
from bench.extract.export import export_module
from bench.extract.model_cache import ExportedModel, state_dict_sha256
from bench.extract.pipeline import Batch, Extraction, chunk_rows, run_model
from bench.train.loop import parameterised, transform
from bench.work import ExtractTrunk, weights_file
from featurestore import FeatureStore, StoreError

if TYPE_CHECKING:
    from bench.context import Context

STORAGE = "float16"


@dataclass(frozen=True)
class Split:
    """A network as `top(trunk(x))`; both hold the network's own modules, so training the top trains the net."""

    cut: str  # the name of the top's first module
    trunk: nn.Sequential
    top: nn.Sequential


def split(backbone: Backbone, net: nn.Module, train_last: int) -> Split:
    """`net` cut where its frozen part ends for `train_last` (see the module's doc)."""
    if backbone.chain is None:
        raise BenchError(f"{backbone.name} declares no cut points (Backbone.chain), so its top cannot train from "
                         "cached trunk activations: use a recipe without `views`")
    names, modules = zip(*backbone.chain(net))
    trainable = set(parameterised(net)[-train_last:])
    start = next(i for i, m in enumerate(modules) if trainable & set(m.modules()))
    while start > 0 and not parameterised(modules[start - 1]):
        start -= 1
    if start == 0:
        raise BenchError(f"train_last = {train_last} trains {backbone.name} from its first cut point on: there is no "
                         "frozen trunk to cache; use a recipe without `views`")
    # the trunk only ever runs as at inference: its BatchNorm keeps its statistics
    return Split(names[start], nn.Sequential(*modules[:start]).eval(), nn.Sequential(*modules[start:]))


@dataclass(frozen=True)
class ViewPool:
    """The views of every image of a manifest, drawn ahead: view 0 as it is, views 1.. augmented."""

    views: int
    seed: int
    draws: np.ndarray  # float32 (n, views - 1, 3), bench.train.loop.transform's draws

    @classmethod
    def drawn(cls, n: int, views: int, seed: int) -> ViewPool:
        generator = torch.Generator().manual_seed(seed)
        return cls(views, seed, torch.rand(n, views - 1, 3, generator=generator).numpy())

    def view_batches(self, images: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """The views of normalised images (m, 3, S, S) at manifest `positions`, one batch per view. Augmenting after
        normalising is augmenting before: resampling is linear with weights summing to one, normalising affine."""
        x, draws = torch.from_numpy(images), torch.from_numpy(self.draws[positions])
        return [images, *(transform(x, draws[:, v]).numpy() for v in range(self.views - 1))]

    def rows(self, session, batch: Batch, positions: np.ndarray) -> np.ndarray:
        """The batch's store rows: each image's trunk activations of every view, flattened."""
        views = [run_model(session, dataclasses.replace(batch, images=view))
                 for view in self.view_batches(batch.images, positions)]
        return np.stack(views, axis=1).reshape(len(batch.images), -1)


def trunk_key(cut: Split, preprocessing: Preprocessing, views: int, seed: int) -> tuple[str, str]:
    """The trunk set's key, and the sha256 of the trunk's weights (its identity in the store)."""
    weights = state_dict_sha256(cut.trunk)
    digest = hashlib.sha256(json.dumps([weights, preprocessing.to_dict()]).encode()).hexdigest()[:12]
    return f"trunk-{cut.cut}-{preprocessing.size}px-{views}v-s{seed}-{digest}", weights


def activation_shape(trunk: nn.Module, size: int) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(trunk(torch.zeros(1, 3, size, size)).shape[1:])


def prepare(unit: ExtractTrunk, ctx: Context) -> Extraction:
    """The trunk pass `unit` asks for: every image's pool of `unit.views` views through the trunk of the backbone's
    starting weights (those its fine-tunes start from); nothing is computed yet. Resumable and leased as any
    feature set."""
    backbone, cut, preprocessing = _trunk_of(unit, ctx)
    key, weights = trunk_key(cut, preprocessing, unit.views, unit.seed)
    manifest = unit.dataset.manifest(ctx)
    shape = activation_shape(cut.trunk, preprocessing.size)
    model = export_trunk(backbone, cut, preprocessing, shape, paths.onnx_dir(ctx.home))
    attrs = {"model_sha256": weights, "preprocessing": preprocessing.to_dict(), "dataset": unit.dataset.adapter,
             "backbone": backbone.name, "key": key, "cut": cut.cut, "train_last": unit.train_last,
             "activation_shape": list(shape), "views": unit.views, "view_seed": unit.seed,
             "onnx_sha256": model.sha256, "dataset_options": unit.dataset.options, "bench_version": bench.__version__}
    dim = unit.views * int(np.prod(shape))
    writer = FeatureStore(ctx.store).open_for_write(
        unit.dataset.adapter, backbone.name, key, image_ids=manifest["image_id"].astype(str).to_numpy(),
        image_digests=image_digests(manifest), dim=dim, attrs=attrs, overwrite=unit.overwrite, dtype=STORAGE,
        chunk_rows=chunk_rows(dim * np.dtype(STORAGE).itemsize // 4, unit.batch_size))  # (it counts float32s)
    return Extraction(unit.dataset.adapter, backbone.name, key, manifest, model, writer, unit.batch_size,
                      todo=writer.missing_chunks(), pool_rows=ViewPool.drawn(len(manifest), unit.views, unit.seed).rows)


def set_key(unit: ExtractTrunk, ctx: Context) -> str:
    """The store key of the set `unit` fills (it names the trunk's weights: the network is built to know it)."""
    _, cut, preprocessing = _trunk_of(unit, ctx)
    return trunk_key(cut, preprocessing, unit.views, unit.seed)[0]


def _trunk_of(unit: ExtractTrunk, ctx: Context) -> tuple[Backbone, Split, Preprocessing]:
    backbone = ctx.registry.backbone(unit.backbone)
    if backbone.random_init:  # a random start trains every layer (Recipe.starting_from): nothing is frozen
        raise BenchError(f"{backbone.name} starts from random weights, so its fine-tunes train the whole network "
                         "and read no trunk activations: store none for it")
    cut = split(backbone, backbone.create(weights_file(unit.weights) or ctx.source_weights(backbone)), unit.train_last)
    return backbone, cut, backbone.preprocessing.with_size(unit.image_size)


def export_trunk(backbone: Backbone, cut: Split, preprocessing: Preprocessing, shape: tuple[int, ...],
                 cache: Path | None = None) -> ExportedModel:
    """The trunk as ONNX (flattened activations), as if it were a backbone of its own, in the ONNX cache `cache`."""
    dim = int(np.prod(shape))
    as_backbone = dataclasses.replace(backbone, name=f"{backbone.name}.trunk-{cut.cut}", feature_dim=dim)
    return export_module(nn.Sequential(cut.trunk, nn.Flatten()).eval(), as_backbone, preprocessing,
                         f"{backbone.name}'s layers before {cut.cut}", cache)


def export_top(backbone: Backbone, cut: Split, preprocessing: Preprocessing, shape: tuple[int, ...],
               cache: Path | None = None) -> ExportedModel:
    """The top as ONNX, taking the trunk's activations (`shape`, one image's), in the ONNX cache `cache`:
    onnxruntime runs it about 2.7 times as fast as torch on one CPU thread (Lite0's last block + head, lab notes)."""
    as_backbone = dataclasses.replace(backbone, name=f"{backbone.name}.top-{cut.cut}")
    return export_module(cut.top.eval(), as_backbone, preprocessing, f"{backbone.name}'s layers from {cut.cut} on",
                         cache, input_shape=shape)


def read_pool(store: str, dataset: str, backbone: str, key: str, image_ids: np.ndarray) -> np.ndarray:
    """The stored pools of `image_ids`, float16 (n, V, C, H, W)."""
    try:
        stored = FeatureStore(store).read(dataset, backbone, key)
    except StoreError as exc:
        raise BenchError(f"no complete trunk set {dataset}/{backbone}/{key} in {store}: make it with `bench extract "
                         f"--trunk RECIPE --seed SEED` for this backbone, dataset and store") from exc
    rows = {image_id: i for i, image_id in enumerate(stored.image_ids)}
    missing = [i for i in image_ids if i not in rows]
    if missing:
        raise BenchError(f"trunk set {dataset}/{backbone}/{key} in {store} lacks {len(missing)} training image(s) "
                         f"(e.g. {missing[0]}, unreadable when it was made): replace them and make it again")
    shape = (stored.attrs["views"], *stored.attrs["activation_shape"])
    same_order = np.array_equal(stored.image_ids, image_ids)  # a whole manifest's set: no gigabyte copy
    features = stored.features if same_order else stored.features[[rows[i] for i in image_ids]]
    return features.reshape(len(image_ids), *shape)
