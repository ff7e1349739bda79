"""What a backbone plugin declares: architecture, preprocessing, feature layer and how its weights are obtained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from bench.atomic import atomic_path
from bench import paths
from bench.errors import BenchError
from bench.images import load_image

if TYPE_CHECKING:  # torch is imported where a network is built or read: listing backbones does not pay for it
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB uint8 image becomes the network's input.

    Images are resized to `size` x `size` ignoring the aspect ratio (as the paper did; `resize_mode` "square"),
    or, with "shorter-side", their shorter side to size / crop_pct and the centre size x size cropped (timm's and
    open_clip's evaluation transform), with `interpolation`; put in `channel_order`, scaled to [0, value_range],
    then `(x - mean) / std` per channel (mean/std in that order and range).
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"
    value_range: float = 1.0
    # added later: `to_dict` leaves them out at their defaults, so the models and feature sets of every backbone
    # that does not set them keep their identity (cache keys, store provenance)
    resize_mode: Literal["square", "shorter-side"] = "square"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"  # a name in bench.images.INTERPOLATIONS

    def load(self, path: str | Path) -> np.ndarray:
        """The image at `path` decoded and resized as this preprocessing says: uint8 (size, size, 3)."""
        return load_image(path, self.size, resize_mode=self.resize_mode, crop_pct=self.crop_pct,
                          interpolation=self.interpolation)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images (N, H, W, 3), already resized, -> float32 network input (N, 3, H, W)."""
        x = images.transpose(0, 3, 1, 2)
        if self.channel_order == "BGR":
            x = x[:, ::-1]
        # one float copy made in the transposing pass, then one in-place multiply-add: this runs on every image
        # extracted, and a chain of whole-array temporaries cost 7x the time
        x = np.ascontiguousarray(x, dtype=np.float32)
        std = np.asarray(self.std, np.float32)
        x *= (np.float32(self.value_range / 255.0) / std).reshape(3, 1, 1)
        x -= (np.asarray(self.mean, np.float32) / std).reshape(3, 1, 1)
        return x

    @classmethod
    def from_dict(cls, saved: dict) -> Preprocessing:
        """The inverse of `to_dict` (JSON and checkpoints keep tuples as lists)."""
        return cls(**{**saved, "mean": tuple(saved["mean"]), "std": tuple(saved["std"])})

    def with_size(self, size: int) -> Preprocessing:
        return replace(self, size=size)

    def to_dict(self) -> dict:
        saved = asdict(self)
        return {f.name: saved[f.name] for f in fields(self)
                if f.name not in RESIZE_FIELDS or saved[f.name] != f.default}


RESIZE_FIELDS = ("resize_mode", "crop_pct", "interpolation")  # added later: recorded only where not at the default


@dataclass(frozen=True)
class SourceStage:
    """A training stage on a source task whose result becomes the backbone's initial weights."""

    dataset: str  # dataset adapter name, e.g. "kaggle-dr"
    task: str  # in words, e.g. "5 retinopathy grades"
    start: str  # backbone whose initial weights the stage starts from, e.g. "scratch" or "vgg-m"
    output: str  # file name under bench.paths.weights_dir(), e.g. "retino.pt"


def save_checkpoint(path: Path, net: nn.Module, backbone: str, preprocessing: Preprocessing, **meta) -> Path:
    """The one checkpoint format: feature-net state dict + the preprocessing it was trained with + provenance."""
    import torch

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:  # an interrupted save never leaves a half-written checkpoint behind
        torch.save({"state_dict": state, "backbone": backbone, "preprocessing": preprocessing.to_dict(), "meta": meta},
                   tmp)
    return Path(path)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as a dict with at least `state_dict` (a plain state dict file is wrapped)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"weights file not found: {path}. Pass an existing file (a safetensors file or a torch "
                         "state dict) with --weights PATH")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"state_dict": load_file(path)}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise BenchError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(obj, dict):
        raise BenchError(f"{path} holds no state dict")
    return obj if "state_dict" in obj else {"state_dict": obj}


@dataclass(frozen=True)
class Checkpoint:
    """A weights file, read at most once however many of its parts are asked for: an extraction needs its state
    dict, the preprocessing it was trained with and its record, and each read of a large checkpoint costs seconds."""

    path: Path

    @classmethod
    def of(cls, weights: Path | Checkpoint) -> Checkpoint:
        return weights if isinstance(weights, Checkpoint) else cls(Path(weights))

    @cached_property
    def content(self) -> dict:
        return read_checkpoint(self.path)

    @property
    def meta(self) -> dict:
        return self.content.get("meta", {})

    def preprocessing(self, default: Preprocessing) -> Preprocessing:
        """The preprocessing the weights were trained with (e.g. a smaller image size), else `default`."""
        saved = self.content.get("preprocessing")
        return Preprocessing.from_dict(saved) if saved else default


def load_state_dict(net: nn.Module, state: object, source: Path, drop: tuple[str, ...] = ()) -> None:
    """Load the state dict read from `source` (a bench checkpoint's, a plain `torch.save`d one or a safetensors
    file's) into `net`; entries under the prefixes `drop` (a classifier the feature net does not have) are left out."""
    if not isinstance(state, dict):
        raise BenchError(f"{source} holds no state dict")
    state = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise BenchError(f"{source} does not fit this architecture: {exc}") from exc


def weights_loader(file: str, how: str) -> Callable[[nn.Module], None]:
    """A `load_initial` that reads the user's `weights_dir()/file` (e.g. a trained source stage), or says how to make it."""

    def load(net: nn.Module) -> None:
        path = paths.weights_dir(paths.home()) / file
        if not path.is_file():
            raise BenchError(f"{path} not found: {how}, or pass --weights PATH")
        load_state_dict(net, read_checkpoint(path)["state_dict"], path)

    return load


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: `create()` returns a torch module whose forward maps (N, 3, S, S) to (N, feature_dim)."""

    name: str
    architecture: str
    preprocessing: Preprocessing
    feature_layer: str
    feature_dim: int
    initial_weights: str  # how they are obtained, in words, for `bench backbones`
    build: Callable[[], nn.Module]  # the architecture with its own initialisation, no pretrained weights
    load_initial: Callable[[nn.Module], None] | None = None  # loads the initial weights, or raises BenchError saying how to get them
    # loads the state dict of `--weights PATH` or a fine-tuned checkpoint, read once by bench: (net, state, file)
    load_state: Callable[[nn.Module, object, Path], None] = load_state_dict
    source_stages: tuple[SourceStage, ...] = ()
    random_init: bool = False  # the initial weights are untrained, so training from them trains every layer
    # the net as named modules in forward order whose composition is its forward (timm's stem, blocks, head...): its
    # cut points, where a frozen trunk ends and its output can be cached (bench.train.trunk); None: not cut, ever
    chain: Callable[[nn.Module], list[tuple[str, nn.Module]]] | None = None
    size_fixed: bool = False  # the input size was asked for (`name@SIZE`): it beats the size a checkpoint was trained at
    # the backbone built for `size` x `size` input, for a network whose layers depend on it (a ViT's position
    # embedding); None: the same network takes any size
    at_size: Callable[[int], Backbone] | None = field(default=None, compare=False)
    plugin: str = field(default="", compare=False)  # filled in by the plugin manager

    def resized(self, size: int) -> Backbone:
        """The same network fed `size` x `size` images, as its own backbone `name@size` (its own feature sets)."""
        built = self.at_size(size) if self.at_size else self
        return replace(built, name=f"{self.name}@{size}", preprocessing=self.preprocessing.with_size(size),
                       size_fixed=True, plugin=self.plugin)

    def create(self, weights: Path | Checkpoint | None = None) -> nn.Module:
        """The network with `weights` (a file, or a checkpoint already read) or, without it, the backbone's initial
        weights."""
        net = self.build()
        if weights is not None:
            checkpoint = Checkpoint.of(weights)
            self.load_state(net, checkpoint.content["state_dict"], checkpoint.path)
        elif self.load_initial is not None:
            self.load_initial(net)
        return net.eval()
