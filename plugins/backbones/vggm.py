"""VGG-M (Chatfield et al. 2014) and the paper's four backbones built on it: `vgg-m`, `scratch`, `retino`, `double`.

The layers follow MatConvNet's `imagenet-vgg-m.mat` exactly, so its converted weights (see `matconvnet.py`) compute
what MatConvNet computes; the layer names are MatConvNet's too. One addition: an adaptive average pool to 6x6 before
fc6, the identity at 224 px, lets the network take the smaller images of the CPU training recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench import paths
from bench.backbone import Backbone, Preprocessing, SourceStage, weights_loader

if TYPE_CHECKING:  # the network lives in vggm_net.py: declaring the backbones does not import torch
    from torch import nn

FEATURE_DIM = 4096
# MatConvNet VGG-M input: RGB in 0-255 minus the ImageNet mean (RGB order: the reference code swapped R and G)
PREPROCESSING = Preprocessing(size=224, mean=(123.68, 116.78, 103.94), std=(1.0, 1.0, 1.0), value_range=255.0)
ARCHITECTURE = "VGG-M"
IMAGENET_FILE = "vgg-m-imagenet.pt"


def build() -> nn.Module:
    from plugins.backbones.vggm_net import VGGM  # here: torch is imported when a network is built

    return VGGM()


def chain(net: nn.Module) -> list[tuple[str, nn.Module]]:
    from plugins.backbones.vggm_net import chain

    return chain(net)


def orthogonal_init(net: nn.Module) -> None:
    from plugins.backbones.vggm_net import orthogonal_init

    orthogonal_init(net)


def imagenet_path() -> Path:
    return paths.weights_dir(paths.home()) / IMAGENET_FILE


def backbones() -> list[Backbone]:
    common = {"architecture": ARCHITECTURE, "preprocessing": PREPROCESSING, "feature_layer": "fc7 (ReLU)",
              "feature_dim": FEATURE_DIM, "build": build, "chain": chain}
    retino_stage = SourceStage("kaggle-dr", "5 retinopathy grades", start="scratch", output="retino.pt")
    double_stage = SourceStage("kaggle-dr", "5 retinopathy grades", start="vgg-m", output="double.pt")
    return [
        Backbone(name="vgg-m", initial_weights="ImageNet (MatConvNet, imported)",
                 load_initial=weights_loader(IMAGENET_FILE, "download imagenet-vgg-m.mat from MatConvNet's model "
                                              "zoo (vlfeat.org/matconvnet/pretrained) and run `bench weights "
                                              "import-matconvnet imagenet-vgg-m.mat`"), **common),
        # the orthogonal init is the initial weights rather than part of build(): it takes tens of seconds on a
        # CPU (fc6 is 4096 x 18432), which loading a fine-tuned checkpoint should not pay
        Backbone(name="scratch", initial_weights="orthogonal, biases 0.05", load_initial=orthogonal_init,
                 random_init=True, **common),
        Backbone(name="retino", initial_weights="its kaggle-dr stage",
                 load_initial=weights_loader(retino_stage.output, "train it with `bench train --backbone retino "
                                              "--dataset kaggle-dr --root PATH`"),
                 source_stages=(retino_stage,), **common),
        Backbone(name="double", initial_weights="its kaggle-dr stage",
                 load_initial=weights_loader(double_stage.output, "train it with `bench train --backbone double "
                                              "--dataset kaggle-dr --root PATH`"),
                 source_stages=(double_stage,), **common),
    ]
