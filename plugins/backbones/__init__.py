"""The built-in backbones, registered through the same hooks as a third-party plugin's: the named ones, and
any timm / Hugging Face / open_clip model by its prefix (`bench_backbone_named`, in `named`)."""

from typing import Callable

from bench.backbone import Backbone
from bench.hookspecs import hookimpl
from plugins.backbones import efficientnet, vgg16, vggm
from plugins.backbones.named import bench_backbone_named  # noqa: F401 (the hook this plugin implements)


@hookimpl
def bench_register_backbones(register: Callable[[Backbone], None]) -> None:
    for backbone in vggm.backbones():
        register(backbone)
    register(vgg16.backbone())
    for variant in efficientnet.INPUT_SIZE:
        register(efficientnet.backbone(variant))
    register(efficientnet.dermoscopy("lite0"))
