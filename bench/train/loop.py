"""The one training loop: every source stage (retino, double) and every target fine-tune runs through `fit`.

The paper's recipe (section 2): SGD with Nesterov momentum and L2, a stratified 10% validation split, the epoch
with the lowest validation loss kept, classes balanced by augmenting only the minority classes. Images are decoded
once into a uint8 tensor on the training device and augmented there, so a GPU is never starved by the decoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.atomic import atomic_path
from bench.backbone import RESIZE_FIELDS, Backbone, Preprocessing, read_checkpoint, save_checkpoint
from bench.digests import file_digests
from bench.errors import BenchError
from bench.images import IMAGES_VERSION
from bench.paths import home
from bench.progress import progress
from bench.train.recipes import Recipe
from bench.threads import count as thread_count
from protocols.splits import stratified_group_folds

VALIDATION_FOLDS = 10  # one fold of ten = the paper's 10% validation split
SCALE_RANGE = (0.8, 1.25)  # random zoom out / in of augmented images; rotations take any angle (a lesion has no "up")


@dataclass(frozen=True)
class LabelledImages:
    """What a run trains on. `groups` (e.g. lesion ids) keep all images of one lesion on one side of the
    training/validation split, so the validation loss is not flattered by near-duplicates."""

    image_ids: np.ndarray
    paths: list[str]
    labels: np.ndarray  # int64 indices into `classes`
    classes: tuple[str, ...]
    groups: np.ndarray


@dataclass(frozen=True)
class TrainingJob:
    """One training run: `start()` builds the feature net with its starting weights (called after seeding, so a
    random initialisation is reproducible); a new linear head learns `data.classes` and is dropped when saving."""

    backbone: str
    start: Callable[[], nn.Module]
    feature_dim: int
    data: LabelledImages
    recipe: Recipe
    preprocessing: Preprocessing  # the backbone's, at the recipe's image size: saved with the weights
    out: Path
    run_dir: Path  # per-epoch resumable state; removed once `out` is written
    seed: int = 0
    meta: dict = field(default_factory=dict)
    store: str | None = None  # the feature store of the trunk activations a recipe with `views` trains from
    # with `views`: the backbone whose trunk set it reads (a source stage's start; a study's own backbones are no
    # installed plugin, so it travels with the job)
    trunk_of: Backbone | None = None


@dataclass
class RunState:
    """Where a run stands after its last finished epoch; saved every epoch so an interrupted run resumes."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf  # the kept epoch's
    best_val_auc: float = -math.inf  # the kept epoch's, with `keep = "auc"`
    history: list[dict] = field(default_factory=list)


Setup = Callable[[TrainingJob, torch.device, torch.Generator], tuple["Trainer", torch.Tensor]]


def fit(job: TrainingJob, device: torch.device | None = None, setup: Setup | None = None) -> RunState:
    """Train, keep the epoch with the lowest validation loss (with the recipe's `keep = "auc"`: the highest
    validation AUC), save it to `job.out`; resumes from `job.run_dir`.
    `setup` makes the trainer and the training data (default: the whole network on decoded images)."""
    if job.recipe.views and setup is None:
        raise BenchError(f"recipe {job.recipe.name} trains the top from cached trunk activations: run it with "
                         "bench.train.top.fit")
    device = device or default_device()
    torch.manual_seed(job.seed)
    generator = torch.Generator().manual_seed(job.seed)  # sampling and augmentation draws, on the CPU for every device
    train_idx, val_idx = validation_split(job.data, job.seed)
    trainer, images = (setup or whole_network)(job, device, generator)
    labels = torch.tensor(job.data.labels, device=device)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    state = resume(job.run_dir, trainer.model, trainer.optimizer, generator)
    steps = _batch_count(balanced_size(job.data.labels[train_idx]), job.recipe.batch_size)
    with deterministic(device), progress("training", job.recipe.epochs * steps, unit="batches",
                                         done=state.epoch * steps) as shown:
        for epoch in range(state.epoch, job.recipe.epochs):
            shown.update(what=f"epoch {epoch + 1}/{job.recipe.epochs}")
            order, augmented = balanced_epoch(job.data.labels[train_idx], generator, job.recipe.augment == "all")
            loss, rate = trainer.epoch(images, labels, train_idx[order], augmented,
                                       lambda status: shown.advance(1, status),
                                       head_only=epoch < job.recipe.head_epochs)
            val_loss = validation_loss(trainer.model, trainer.inputs, images[val_idx], labels[val_idx],
                                       job.recipe.batch_size, trainer.amp)
            val_auc = (validation_auc(trainer.model, trainer.inputs, images[val_idx], labels[val_idx],
                                      job.recipe.batch_size, trainer.amp) if job.recipe.keep == "auc" else None)
            _end_epoch(job, state, trainer, loss, val_loss, rate, val_auc)
            best = (f"auc {state.best_val_auc:.4f}" if val_auc is not None else f"{state.best_val_loss:.4f}")
            shown.update(status=f"loss {loss:.4f}  val {val_loss:.4f}"
                                + (f" auc {val_auc:.4f}" if val_auc is not None else "")
                                + f" (best {best} @ {state.best_epoch})  {rate:.1f} img/s")
    _save_best(job, trainer.net, state)
    return state


def whole_network(job: TrainingJob, device: torch.device, generator: torch.Generator) -> tuple[Trainer, torch.Tensor]:
    """The trainer of the feature net with a new head, and the decoded training images."""
    # the network before the images: missing starting weights fail before the long decoding
    trainer = Trainer(nn.Sequential(job.start(), nn.Linear(job.feature_dim, len(job.data.classes))).to(device),
                      job.recipe, job.preprocessing, generator)
    return trainer, decode(job.data.paths, job.preprocessing.size, device, job.preprocessing)


class Trainer:
    """A classifier (feature net + head) with its optimiser, mixed precision and frozen layers."""

    def __init__(self, model: nn.Sequential, recipe: Recipe, preprocessing: Preprocessing,
                 generator: torch.Generator) -> None:
        self.model, self.recipe, self.preprocessing, self.generator = model, recipe, preprocessing, generator
        self.net = model[0]  # the feature net whose best epoch is saved
        self.frozen = freeze(model[0], recipe.train_last)
        self.body = [p for p in model[0].parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, recipe)
        self.amp, self.scaler = mixed_precision(next(model.parameters()).device, recipe.cpu_precision)

    def epoch(self, images: torch.Tensor, labels: torch.Tensor, index: np.ndarray, augmented: np.ndarray,
              on_step: Callable[[str], None] = lambda status: None, head_only: bool = False) -> tuple[float, float]:
        """One pass over `images[index]` in batches; returns the mean training loss and images/s. `head_only`
        trains the new head alone, the feature net frozen as it is."""
        self.train_mode(head_only)
        started, total, seen, size = time.perf_counter(), 0.0, 0, self.recipe.batch_size
        for start in range(0, _batch_count(len(index), size) * size, size):
            i = torch.from_numpy(index[start:start + size])
            total += self.step(images[i], labels[i], torch.from_numpy(augmented[start:start + size])) * len(i)
            seen += len(i)
            on_step(f"loss {total / seen:.4f}  {seen / (time.perf_counter() - started):.1f} img/s")
        return total / max(seen, 1), seen / (time.perf_counter() - started)

    def train_mode(self, head_only: bool) -> None:
        """Training mode for the layers that train; the frozen ones (with `head_only`, the whole feature net) run
        as at inference, so their BatchNorm keeps its running statistics."""
        self.model.train()
        for layer in self.model[0].modules() if head_only else self.frozen:
            layer.training = False
        for p in self.body:
            p.requires_grad_(not head_only)

    def step(self, images: torch.Tensor, labels: torch.Tensor, augment_mask: torch.Tensor) -> float:
        """One SGD step on a uint8 batch (N, 3, S, S); the images flagged in `augment_mask` are augmented first."""
        x = images.float()
        if augment_mask.any():
            mask = augment_mask.to(x.device)
            x[mask] = augment(x[mask], self.generator)
        return self.update(to_input(x, self.preprocessing), labels)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Stored images (uint8) as the model's input, as they are."""
        return to_input(images.float(), self.preprocessing)

    def update(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One SGD step on the model's input `x`; returns the batch's loss."""
        with self.amp():
            loss = F.cross_entropy(self.model(x).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()


def _end_epoch(job: TrainingJob, state: RunState, trainer: Trainer, loss: float, val_loss: float, rate: float,
               val_auc: float | None = None) -> None:
    """Record the epoch, keep its weights if they are the best so far (by the recipe's `keep`), and save the
    resumable state."""
    state.epoch += 1
    state.history.append({"epoch": state.epoch, "loss": loss, "val_loss": val_loss, "images_per_s": rate,
                          **({} if val_auc is None else {"val_auc": val_auc})})
    better = val_auc > state.best_val_auc if job.recipe.keep == "auc" else val_loss < state.best_val_loss
    if better:
        state.best_epoch, state.best_val_loss = state.epoch, val_loss
        if val_auc is not None:
            state.best_val_auc = val_auc
        save_checkpoint(job.run_dir / "best.pt", trainer.net, job.backbone, job.preprocessing)
    _save_state(job.run_dir / "last.pt", state, trainer.model, trainer.optimizer, trainer.generator)


def _batch_count(n: int, size: int) -> int:
    """Batches of `size` over `n` items, leaving out a last batch of a single image (BatchNorm cannot train on it)."""
    return math.ceil(n / size) - (n % size == 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def validation_split(data: LabelledImages, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation images: one of ten folds stratified by label, grouped by lesion."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    if counts.min() < 2:
        rare = [c for c, n in zip(data.classes, counts) if n < 2]
        raise BenchError(f"too few training images of class(es) {rare} ({counts.min()}) to hold some out for "
                         "validation: use more data (a larger --limit) or another fold")
    val = stratified_group_folds(data.labels, data.groups, VALIDATION_FOLDS, seed)[0]  # scikit-learn's folds
    return np.flatnonzero(~val), np.flatnonzero(val)


def decode(paths: list[str], size: int, device: torch.device, preprocessing: Preprocessing | None = None
           ) -> torch.Tensor:
    """Every image decoded and resized once: uint8 (N, 3, size, size) on `device` (PIL releases the GIL), resized
    as `preprocessing` says (default: to a square), so a fine-tune sees the pixels its extraction will.

    The array is kept under `$BENCH_HOME/decoded`, keyed by the files' content (`bench.digests`) and the size, so
    the runs that train on the same images (a study's fine-tunes of one fold, its source stages) decode them once;
    a changed or replaced file makes another key."""
    resize = (preprocessing or Preprocessing()).with_size(size)
    cache = decoded_cache(paths, resize)
    try:
        images = np.load(cache)
    except (OSError, ValueError):  # not there yet, or damaged: decoded again
        images = _decode(paths, resize)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, images)
        tmp.replace(cache)  # atomic: a run interrupted while saving leaves no half-written array behind
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def decoded_cache(paths: list[str], resize: Preprocessing) -> Path:
    # keyed by content: a file replaced by other pixels of the same size (its mtime set back) makes another key;
    # a resize other than the square one is part of the key (the square one is not: earlier caches stay valid)
    size, how = resize.size, {k: v for k, v in resize.to_dict().items() if k in RESIZE_FIELDS}
    identity = [IMAGES_VERSION, size, file_digests(paths).tolist()] + ([how] if how else [])
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    return home() / "decoded" / f"{key}-{len(paths)}x{size}px.npy"


def _decode(paths: list[str], resize: Preprocessing) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=thread_count()) as pool, \
            progress(f"decoding {len(paths)} images at {resize.size} px", len(paths)) as shown:
        images = []
        for image in pool.map(resize.load, paths):
            images.append(image)
            shown.advance()
    return np.stack(images)


def parameterised(net: nn.Module) -> list[nn.Module]:
    """The modules holding parameters of their own, in registration order: what `train_last` counts."""
    return [m for m in net.modules() if next(m.parameters(recurse=False), None) is not None]


def freeze(net: nn.Module, train_last: int | None) -> list[nn.Module]:
    """Freeze all but the last `train_last` parameterised layers (in registration order, which follows the forward
    pass in our backbones) and return the frozen ones; `None` trains everything."""
    if train_last is None:
        return []
    layers = parameterised(net)
    frozen = layers[: max(len(layers) - train_last, 0)]
    for layer in frozen:
        for p in layer.parameters(recurse=False):
            p.requires_grad_(False)
    return frozen


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD with Nesterov momentum; L2 on weights only, not on biases or normalisation scales (as Lasagne's
    `regularize_network_params`, which the paper used, does)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": recipe.weight_decay},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)


def mixed_precision(device: torch.device, cpu_precision: str = "float32"
                    ) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler]:
    """Autocast on CUDA (bf16 where the GPU has it, else fp16 with loss scaling); on the CPU, bf16 autocast where
    the recipe asks for it (`cpu_precision`), else plain float32."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=cuda and dtype == torch.float16)
    enabled = cuda or cpu_precision == "bfloat16"
    return (lambda: torch.autocast(device.type, dtype=dtype, enabled=enabled)), scaler


def balanced_size(labels: np.ndarray) -> int:
    return int(np.bincount(labels).max() * np.count_nonzero(np.bincount(labels)))


def balanced_epoch(labels: np.ndarray, generator: torch.Generator,
                   augment_all: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order: every image once as it is, plus augmented copies of randomly drawn minority-class images
    until each class has as many as the largest. Returns (positions into `labels`, augment flags), shuffled.
    `augment_all` augments every image shown, so that being augmented no longer marks a minority image."""
    counts = np.bincount(labels)
    order, augmented = [np.arange(len(labels))], [np.zeros(len(labels), bool)]
    for label, count in enumerate(counts):
        if 0 < count < counts.max():
            members = np.flatnonzero(labels == label)
            draws = torch.randint(count, (int(counts.max() - count),), generator=generator).numpy()
            order.append(members[draws])
            augmented.append(np.ones(len(draws), bool))
    shuffle = torch.randperm(sum(map(len, order)), generator=generator).numpy()
    flags = np.concatenate(augmented)[shuffle]
    return np.concatenate(order)[shuffle], np.ones_like(flags) if augment_all else flags


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (any angle), scaling and a horizontal flip, drawn per image, as one batched resampling.

    torchvision's v2 transforms draw one set of parameters per call, which a whole batch would share. Borders are
    filled by reflection: black corners would appear only on (minority-class) augmented images and give the class
    away. A flip plus any rotation also covers vertical flips.
    """
    # drawn on the CPU, so every device sees the same augmentations
    return transform(images, torch.rand(len(images), 3, generator=generator))


def transform(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`augment` with its draws given: (N, 3) uniform in [0, 1) for the angle, the scale and the flip."""
    n = len(images)
    angle = draws[:, 0] * 2 * math.pi
    scale = SCALE_RANGE[0] * (SCALE_RANGE[1] / SCALE_RANGE[0]) ** draws[:, 1]
    flip = torch.where(draws[:, 2] < 0.5, -1.0, 1.0)
    cos, sin, zero = torch.cos(angle) / scale, torch.sin(angle) / scale, torch.zeros(n)
    theta = torch.stack([torch.stack([cos * flip, -sin, zero], 1), torch.stack([sin * flip, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def to_input(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Float RGB images (N, 3, S, S) in 0..255 -> the network input `Preprocessing.normalise` makes, on their device."""
    x = images * (preprocessing.value_range / 255.0)
    if preprocessing.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(preprocessing.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def validation_loss(model: nn.Module, inputs: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, amp: Callable) -> float:
    """Mean cross-entropy over the validation images, as they are (no augmentation, no rebalancing); `inputs`
    turns a batch of them into the model's input."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        with amp():
            logits = model(inputs(images[start:start + batch_size]))
        total += F.cross_entropy(logits.float(), labels[start:start + batch_size], reduction="sum").item()
    return total / len(images)


@torch.no_grad()
def validation_auc(model: nn.Module, inputs: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   labels: torch.Tensor, batch_size: int, amp: Callable) -> float:
    """The AUC of the model's own classifier over the validation images, as they are: of the second class's
    probability for two classes, one-vs-rest macro for more."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    probabilities = []
    for start in range(0, len(images), batch_size):
        with amp():
            logits = model(inputs(images[start:start + batch_size]))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
    p, y = torch.cat(probabilities).numpy(), labels.cpu().numpy()
    if len(np.unique(y)) < p.shape[1]:
        raise BenchError(f"keep = \"auc\" needs every class in the validation split; it holds {len(np.unique(y))} "
                         f"of {p.shape[1]}: use keep = \"loss\"")
    return float(roc_auc_score(y, p[:, 1]) if p.shape[1] == 2 else
                 roc_auc_score(y, p, multi_class="ovr", average="macro"))


def resume(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> RunState:
    """The state of an interrupted run of the same job (model, optimiser, RNGs restored), or a fresh one."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return RunState()
    saved = read_checkpoint(path)
    model.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["rng"]["generator"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return RunState(**saved["state"])


def _save_state(path: Path, state: RunState, model: nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator) -> None:
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:  # an interruption while saving leaves the previous epoch's state intact
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng,
                    "state": vars(state)}, tmp)


def _save_best(job: TrainingJob, net: nn.Module, state: RunState) -> None:
    if state.best_epoch == 0:
        raise BenchError(f"training {job.backbone} diverged (validation loss {state.history[-1]['val_loss']}): "
                         f"lower the learning rate (--lr, now {job.recipe.lr})")
    net.load_state_dict(read_checkpoint(job.run_dir / "best.pt")["state_dict"])
    save_checkpoint(job.out, net, job.backbone, job.preprocessing, **job.meta, recipe=job.recipe.to_dict(),
                    seed=job.seed, classes=list(job.data.classes), train_images=len(job.data.labels),
                    epochs_run=state.epoch, best_epoch=state.best_epoch, val_loss=state.best_val_loss,
                    **({"val_auc": state.best_val_auc} if job.recipe.keep == "auc" else {}),
                    history=state.history)
    shutil.rmtree(job.run_dir)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on the CPU, so the same command gives the same weights (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(previous or device.type == "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
