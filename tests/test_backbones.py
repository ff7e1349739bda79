"""Built-in backbones: forward shapes, weight loading and conversion, and proof that the ImageNet weights are real."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from bench import plugins
from plugins.backbones import efficientnet

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = range(967, 969)  # espresso, cup


def _features(net: torch.nn.Module, images: np.ndarray, backbone) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.from_numpy(backbone.preprocessing.normalise(images)))


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """As bench.images.load_image does: resize ignoring the aspect ratio, bilinear."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_efficientnet_weights_are_the_real_imagenet_ones(variant):
    backbone = plugins.get_backbone(f"efficientnet-{variant}")
    net = backbone.create()
    head = efficientnet.imagenet_classifier(variant)
    size = backbone.preprocessing.size
    images = np.stack([_resized(data.chelsea(), size), _resized(data.coffee(), size)])
    features = _features(net, images, backbone)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    top1 = head(features).argmax(1).tolist()
    assert top1[0] in IMAGENET_CATS and top1[1] in IMAGENET_COFFEE, top1
