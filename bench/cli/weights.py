"""`bench weights import-matconvnet`: MatConvNet's ImageNet VGG-M as the `vgg-m` backbone's initial weights."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.app import weights_app
from bench.cli.output import console


@weights_app.command("import-matconvnet")
def import_matconvnet(
    file: Annotated[Path, typer.Argument(help="imagenet-vgg-m.mat from MatConvNet's model zoo.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the checkpoint (default: vgg-m-imagenet.pt in "
                                                     "bench's weights folder, where `vgg-m` looks for it).")] = None,
) -> None:
    """Convert a MatConvNet VGG-M (SimpleNN .mat) into a bench checkpoint for the vgg-m backbone."""
    from plugins.backbones import matconvnet, vggm

    path = matconvnet.import_vggm(file, out or vggm.imagenet_path())
    console.print(f"wrote {path}")
