"""`bench perf train`: the training loop's images/s beside its ceilings, the same network's forward and
forward+backward passes on batches already in memory and already normalised; for a recipe with a view pool, the
loop of the top on cached trunk activations and the one-time trunk pass that fills them (bench.train.top, bench.train.trunk)."""

from __future__ import annotations

import os
import resource
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbone import Backbone, Preprocessing
from bench.train.recipes import Recipe
from bench.train.loop import Trainer, default_device, deterministic, to_input


def measure(net: nn.Module, feature_dim: int, preprocessing: Preprocessing, recipe: Recipe, steps: int = 10,
            repeat: int = 1, device: torch.device | None = None, backbone: Backbone | None = None) -> dict:
    """images/s over `steps` batches (after two warm-up batches) of:

    - `forward`: the classifier in inference mode, the head-only epoch's ceiling;
    - `forward_backward`: a training step without augmentation (the recipe's frozen layers frozen), the ceiling
      of an epoch that trains the feature net;
    - `loop_head` and `loop`: the training loop's own epochs (uint8 images on the device, augmented as the
      recipe says, half of them as in a balanced two-class epoch under `augment = "minority"`);
    - with `recipe.views` (and the `backbone` whose cut points split `net`): `top_loop`, the loop's epoch on
      cached trunk activations (bench.train.top), and `trunk_pass`, images/s of the pass that caches them (every view of
      an image: augmented, then the trunk in onnxruntime; decoding not included).
    """
    device = device or default_device()
    load = os.getloadavg()[0]
    generator = torch.Generator().manual_seed(0)
    size, batch = preprocessing.size, recipe.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8).to(device)
    labels = torch.arange(batch, device=device) % 2
    trainer = Trainer(nn.Sequential(net, nn.Linear(feature_dim, 2)).to(device), recipe, preprocessing, generator)
    x = to_input(images.float(), preprocessing)
    n = batch * (steps + 2)
    index = np.arange(n) % batch
    augmented = np.ones(n, bool) if recipe.augment == "all" else np.arange(n) % 2 == 1
    warm = batch * 2

    def loop(head_only: bool) -> float:  # as `fit` runs it
        with deterministic(device):
            trainer.epoch(images, labels, index[:warm], augmented[:warm], head_only=head_only)
            return trainer.epoch(images, labels, index[warm:], augmented[warm:], head_only=head_only)[1]

    runs = {
        "forward_ips": lambda: _rate(lambda: _forward(trainer, x), batch, steps),
        "loop_head_ips": lambda: loop(head_only=True),
        "forward_backward_ips": lambda: _rate(lambda: _forward_backward(trainer, x, labels), batch, steps),
        "loop_ips": lambda: loop(head_only=False),
    }
    if recipe.views:
        runs.update(_cached(backbone, net, feature_dim, preprocessing, recipe, images, labels, index, augmented,
                            warm, device))
    figures = dict.fromkeys(runs, 0.0)
    for _ in range(repeat):  # interleaved rounds, each figure its best: others' load skews a round, not a ratio
        for key, run in runs.items():
            figures[key] = max(figures[key], run())
    return {"device": _device_name(device), **{k: round(v, 1) for k, v in figures.items()},
            "peak_memory_mib": round(_peak_memory(device), 1), "image_size": size, "batch_size": batch,
            "steps": steps, "repeat": repeat, "threads": torch.get_num_threads(),
            "load_average_1min_before": round(load, 2), "views": recipe.views, "cpu_precision": recipe.cpu_precision}


def _cached(backbone: Backbone, net: nn.Module, feature_dim: int, preprocessing: Preprocessing, recipe: Recipe,
            images: torch.Tensor, labels: torch.Tensor, index: np.ndarray, augmented: np.ndarray, warm: int,
            device: torch.device) -> dict[str, Callable[[], float]]:
    """The runs of the cached path: its top's epoch on stored pools, and the trunk pass filling them."""
    from bench.extract.pipeline import Batch, create_session
    from bench.train.top import TopTrainer
    from bench.train.trunk import ViewPool, activation_shape, export_trunk, split

    cut = split(backbone, net, recipe.train_last)
    shape = activation_shape(cut.trunk, preprocessing.size)
    batch = len(images)
    pools = torch.randn(batch, recipe.views, *shape, generator=torch.Generator().manual_seed(0)).half().to(device)
    top = TopTrainer(net, cut.top, nn.Linear(feature_dim, 2), recipe, preprocessing, torch.Generator().manual_seed(0))
    top.model.to(device)
    session = create_session(export_trunk(backbone, cut, preprocessing, shape).path)
    pool, rows = ViewPool.drawn(batch, recipe.views, 0), np.arange(batch)
    x = preprocessing.normalise(images.permute(0, 2, 3, 1).cpu().numpy())
    decoded = Batch(0, rows, np.full(batch, "image"), x, np.ones(batch, bool), [])

    def top_loop() -> float:
        with deterministic(device):
            top.epoch(pools, labels, index[:warm], augmented[:warm])
            return top.epoch(pools, labels, index[warm:], augmented[warm:])[1]

    steps = (len(index) - warm) // batch
    return {"top_loop_ips": top_loop,
            "trunk_pass_ips": lambda: _rate(lambda: pool.rows(session, decoded, rows), batch, max(1, steps // 4))}


def _rate(step: Callable[[], None], batch: int, steps: int) -> float:
    for _ in range(2):  # allocator, cuDNN autotuning
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def _forward(trainer: Trainer, x: torch.Tensor) -> None:
    trainer.model.eval()
    with torch.inference_mode(), trainer.amp():  # in the recipe's arithmetic, as the loop runs it
        trainer.model(x).sum().item()


def _forward_backward(trainer: Trainer, x: torch.Tensor, labels: torch.Tensor) -> None:
    trainer.train_mode(head_only=False)
    with trainer.amp():
        loss = F.cross_entropy(trainer.model(x).float(), labels)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    loss.item()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _peak_memory(device: torch.device) -> float:
    """MiB: the GPU's peak allocation, or on the CPU the process's peak resident memory (KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
