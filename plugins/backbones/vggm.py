"""VGG-M (Chatfield et al. 2014) and the paper's four backbones built on it: `vgg-m`, `scratch`, `retino`, `double`.

The layers follow MatConvNet's `imagenet-vgg-m.mat` exactly, so its converted weights (see `matconvnet.py`) compute
what MatConvNet computes; the layer names are MatConvNet's too. One addition: an adaptive average pool to 6x6 before
fc6, the identity at 224 px, lets the network take the smaller images of the CPU training recipes.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torch import nn

from bench import paths
from bench.backbone import Backbone, Preprocessing, SourceStage, weights_loader

FEATURE_DIM = 4096
# MatConvNet VGG-M input: RGB in 0-255 minus the ImageNet mean (RGB order: the reference code swapped R and G)
PREPROCESSING = Preprocessing(size=224, mean=(123.68, 116.78, 103.94), std=(1.0, 1.0, 1.0), value_range=255.0)
# MatConvNet's normalize [N KAPPA ALPHA BETA] = [5 2 1e-4 0.75] divides by (kappa + alpha * sum x^2)^beta;
# torch's LocalResponseNorm divides by (k + alpha / size * sum x^2)^beta, hence alpha * size here
LRN = {"size": 5, "k": 2.0, "alpha": 1e-4 * 5, "beta": 0.75}
ARCHITECTURE = "VGG-M"
IMAGENET_FILE = "vgg-m-imagenet.pt"


class VGGM(nn.Module):
    """VGG-M up to fc7 after its ReLU; `channels` (conv1-conv5) and `fc` default to the real network's widths."""

    def __init__(self, channels: tuple[int, int, int, int, int] = (96, 256, 512, 512, 512), fc: int = FEATURE_DIM):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, c1, 7, stride=2)), ("relu1", nn.ReLU()), ("norm1", nn.LocalResponseNorm(**LRN)),
            ("pool1", nn.MaxPool2d(3, 2)),
            ("conv2", nn.Conv2d(c1, c2, 5, stride=2, padding=1)), ("relu2", nn.ReLU()),
            ("norm2", nn.LocalResponseNorm(**LRN)),
            # MatConvNet pads pool2 by one row and column at the bottom/right: for a 3x3/2 pool that is ceil mode
            ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("relu5", nn.ReLU()),
            ("pool5", nn.MaxPool2d(3, 2)),
        ]))
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.fc = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(c5 * 6 * 6, fc)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout()),
            ("fc7", nn.Linear(fc, fc)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout()),
        ]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def orthogonal_init(net: nn.Module) -> None:
    """The paper's initialisation without transfer: orthogonal weights, biases 0.05 (seed torch beforehand)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(module.weight)
            nn.init.constant_(module.bias, 0.05)


def imagenet_path() -> Path:
    return paths.weights_dir() / IMAGENET_FILE


def backbones() -> list[Backbone]:
    common = {"architecture": ARCHITECTURE, "preprocessing": PREPROCESSING, "feature_layer": "fc7 (ReLU)",
              "feature_dim": FEATURE_DIM, "build": VGGM}
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
