"""Training only the top of a network from its trunk's cached activations (bench.train.trunk), for recipes with `views`.

Each epoch is the ordinary loop's (bench.train.loop.fit): the same class balancing, the same validation split and
epoch choice; an image shown as it is gets its view 0, an image shown augmented one of its augmented views, drawn
afresh each time. The trunk never runs: its BatchNorm stays as it started, as a frozen layer's does in the loop.
The trainer's `net` is the whole network, whose top is trained in place: what is saved, exported and extracted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bench import paths
from bench.train import loop
from bench.backbone import Preprocessing, read_checkpoint
from bench.errors import BenchError
from bench.extract.pipeline import Extraction, create_session
from bench.train.recipes import Recipe
from bench.train.loop import RunState, Trainer, TrainingJob
from bench.train.trunk import export_top, read_pool, split, trunk_key

if TYPE_CHECKING:
    from bench.context import Context


def fit(job: TrainingJob, device: torch.device | None = None) -> RunState:
    """bench.train.loop.fit, training the top from cached trunk activations where the recipe has a view pool."""
    return loop.fit(job, device, top_trainer if job.recipe.views else None)


class TopTrainer(Trainer):
    """A Trainer of `top` + head whose batches are pools of cached views (N, V, C, H, W)."""

    def __init__(self, net: nn.Module, top: nn.Module, head: nn.Linear, recipe: Recipe, preprocessing: Preprocessing,
                 generator: torch.Generator) -> None:
        super().__init__(nn.Sequential(top, head), recipe, preprocessing, generator)
        self.net = net

    def step(self, pools: torch.Tensor, labels: torch.Tensor, augment_mask: torch.Tensor) -> float:
        """One SGD step: view 0 of the images shown as they are, a random augmented view of the others."""
        n, views = pools.shape[:2]
        drawn = torch.randint(1, views, (n,), generator=self.generator)
        view = torch.where(augment_mask, drawn, 0).to(pools.device)
        return self.update(pools[torch.arange(n, device=pools.device), view].float(), labels)

    def inputs(self, pools: torch.Tensor) -> torch.Tensor:
        return pools[:, 0].float()


def top_trainer(job: TrainingJob, device: torch.device, generator: torch.Generator) -> tuple[TopTrainer, torch.Tensor]:
    """The job's trainer and its training images' pools, on `device`, read from the trunk set in `job.store`."""
    net = job.start()  # seeded as the ordinary loop seeds it: the same start and the same new head
    head = nn.Linear(job.feature_dim, len(job.data.classes))
    if job.trunk_of is None or job.store is None:
        raise BenchError(f"the training job of {job.out} has a view pool but names no trunk set (TrainingJob.trunk_of "
                         "and store): build it with bench.train.jobs")
    cut = split(job.trunk_of, net, job.recipe.train_last)
    key, _ = trunk_key(cut, job.preprocessing, job.recipe.views, job.seed)
    pools = read_pool(job.store, job.meta["dataset"], job.trunk_of.name, key, job.data.image_ids)
    trainer = TopTrainer(net.to(device), cut.top, head.to(device), job.recipe, job.preprocessing, generator)
    return trainer, torch.from_numpy(np.ascontiguousarray(pools)).to(device)


def features_from_trunk(job: Extraction, ctx: Context, protocol: str, fold: str) -> None:
    """Fill a fine-tuned feature set's missing chunks with its network's top on view 0 of the trunk set the
    fine-tune (of `protocol` on `fold`, in `ctx.home`) trained from: no image is read and the trunk does not run.
    The features are the model's within float16's precision of the trunk's activations (a few parts in 10,000)."""
    backbone = ctx.registry.backbone(job.backbone)
    weights = paths.finetuned_checkpoint(ctx.home, job.dataset, job.backbone, protocol, fold)
    saved = read_checkpoint(weights)
    recipe, seed = saved["meta"].get("recipe", {}), saved["meta"].get("seed", 0)
    if not recipe.get("views"):
        raise BenchError(f"{weights} was trained without a view pool, so no trunk set holds its activations: "
                         "extract without --from-trunk")
    net = backbone.create(weights)
    cut = split(backbone, net, recipe["train_last"])
    preprocessing = Preprocessing.from_dict(saved["preprocessing"])
    key, _ = trunk_key(cut, preprocessing, recipe["views"], seed)
    pools = read_pool(ctx.store, job.dataset, job.backbone, key, job.manifest["image_id"].astype(str).to_numpy())
    top = export_top(backbone, cut, preprocessing, pools.shape[2:], paths.onnx_dir(ctx.home))
    job.writer.group.attrs.update({"computed_from": f"trunk set {key}: the top on view 0 ({top.path.name})"})
    session = create_session(top.path)
    for chunk in job.todo:
        rows = job.writer.chunk_rows_of(chunk)
        view0 = pools[rows.start:rows.stop, 0].astype(np.float32)
        job.writer.write_chunk(chunk, session.run(None, {session.get_inputs()[0].name: view0})[0])
