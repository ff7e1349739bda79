"""The built-in backbones, registered through the same hook as a third-party plugin's."""

from typing import Callable

from bench.backbone import Backbone
from bench.hookspecs import hookimpl
from plugins.backbones import efficientnet, vgg16, vggm


@hookimpl
def bench_register_backbones(register: Callable[[Backbone], None]) -> None:
    for backbone in vggm.backbones():
        register(backbone)
    register(vgg16.backbone())
    for variant in efficientnet.INPUT_SIZE:
        register(efficientnet.backbone(variant))
    register(efficientnet.dermoscopy("lite0"))
