"""`vgg16`: torchvision's VGG-16 up to fc7 after its ReLU, with torchvision's ImageNet weights (`IMAGENET1K_V1`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.backbone import Backbone, Preprocessing
from bench.errors import BenchError

if TYPE_CHECKING:  # torch is imported where a network is built: listing backbones does not pay for it
    import torch
    from torch import nn

HEAD = "classifier.6."  # torchvision's 1000-class layer, which the feature net does not have


def build() -> nn.Module:
    from torchvision.models import vgg16

    net = vgg16()
    net.classifier = net.classifier[:-1]  # fc6, ReLU, dropout, fc7, ReLU, dropout
    return net


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: object) -> None:
    """Load torchvision's full state dict (its classifier is dropped) or a bench checkpoint of the feature net."""
    try:
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEAD)})
    except RuntimeError as exc:
        raise BenchError(f"{source} does not fit torchvision's VGG-16: {exc}") from exc


def load_imagenet(net: nn.Module) -> None:
    """From the torch hub cache, downloading into it when the file is missing and the network is reachable."""
    import torch
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
    except OSError as exc:  # urllib's errors when offline are OSErrors
        raise BenchError(f"VGG-16 ImageNet weights are not in the torch cache and cannot be downloaded ({exc}): "
                         f"put {weights.url} at {cached}, or pass --weights PATH") from exc
    load_state(net, state, cached)


def backbone() -> Backbone:
    return Backbone(
        name="vgg16",
        architecture="VGG-16 (torchvision)",
        preprocessing=Preprocessing(size=224),
        feature_layer="fc7 (ReLU)",
        feature_dim=4096,
        initial_weights="ImageNet (torchvision, torch cache)",
        build=build,
        load_initial=load_imagenet,
        load_state=load_state,
    )
