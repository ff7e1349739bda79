"""A tiny backbone and a folder-of-images dataset for the extraction tests, registered like any plugin.

Module globals steer what they register (weights seed, input size), so a test can change the model under a name.
Also importable from a subprocess (see test_extract's kill test).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from timm.layers import create_conv2d
from torch import nn

from bench import plugins
from bench.backbone import Backbone, Preprocessing
from bench.dataset import DatasetAdapter
from bench.hookspecs import hookimpl

if TYPE_CHECKING:
    from bench.extract.pipeline import Extraction

NAME = "tiny-test"
DATASET = "tiny-images"
FEATURE_DIM = 16
SEED = 0  # initial weights
SIZE = 32  # input size


def build() -> nn.Module:
    # TF 'same' padding (computed from the input size at run time), as in tf_efficientnet_lite
    return nn.Sequential(create_conv2d(3, 8, 3, stride=2, padding="same"), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, FEATURE_DIM, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def load_initial(net: nn.Module) -> None:
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def backbone() -> Backbone:
    return Backbone(NAME, "tiny CNN", Preprocessing(size=SIZE), "pool", FEATURE_DIM, "seeded random",
                    build=build, load_initial=load_initial)


def load(root: Path) -> pd.DataFrame:
    paths = sorted(root.glob("*.png"))
    return pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths], "diagnosis": "nevus"})


class Plugin:
    @staticmethod
    @hookimpl
    def bench_register_backbones(register) -> None:
        register(backbone())

    @staticmethod
    @hookimpl
    def bench_register_datasets(register) -> None:
        register(DatasetAdapter(DATASET, "test images", load))


def register() -> None:
    plugins.plugin_manager().register(Plugin, name="test-extraction")


def unregister() -> None:
    plugins.plugin_manager().unregister(name="test-extraction")


def write_images(root: Path, n: int, seed: int = 0) -> Path:
    """n small random PNG images of varying sizes, named img000.png..."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = rng.integers(20, 48, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i:03d}.png")
    return root



def extract(backbone: str, dataset: str, root: Path | None, store: Path | str, limit: int | None = None,
            **how) -> Extraction:
    """Fill a feature set as `bench extract` does (settings as keywords of `bench.work.Extract`); the job."""
    from bench.context import Context
    from bench.extract.pipeline import prepare
    from bench.work import DatasetRef, Extract

    job = prepare(Extract(backbone, DatasetRef.of(dataset, root, limit=limit), **how), Context.for_user(str(store)))
    job.fill()
    return job
