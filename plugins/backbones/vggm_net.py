"""The VGG-M network (torch): MatConvNet's layers and names, and the paper's initialisation without transfer.

Apart from `vggm.py`, which declares the backbones, so that listing them does not import torch.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

# MatConvNet's normalize [N KAPPA ALPHA BETA] = [5 2 1e-4 0.75] divides by (kappa + alpha * sum x^2)^beta;
# torch's LocalResponseNorm divides by (k + alpha / size * sum x^2)^beta, hence alpha * size here
LRN = {"size": 5, "k": 2.0, "alpha": 1e-4 * 5, "beta": 0.75}


class VGGM(nn.Module):
    """VGG-M up to fc7 after its ReLU; `channels` (conv1-conv5) and `fc` default to the real network's widths."""

    def __init__(self, channels: tuple[int, int, int, int, int] = (96, 256, 512, 512, 512), fc: int = 4096):
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


def chain(net: VGGM) -> list[tuple[str, nn.Module]]:
    """MatConvNet's layers in forward order, pool5's activations flattened before fc6."""
    return [*net.features.named_children(), ("pool", net.pool), ("flatten", nn.Flatten()),
            *net.fc.named_children()]


def orthogonal_init(net: nn.Module) -> None:
    """The paper's initialisation without transfer: orthogonal weights, biases 0.05 (seed torch beforehand)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(module.weight)
            nn.init.constant_(module.bias, 0.05)
