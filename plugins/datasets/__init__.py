"""The built-in dataset adapters, registered through the same hook as a third-party plugin's."""

from typing import Callable

from bench.dataset import DatasetAdapter
from bench.hookspecs import hookimpl


@hookimpl
def bench_register_datasets(register: Callable[[DatasetAdapter], None]) -> None:
    # imported here: the adapters need pandas, which commands that list backbones only should not load
    from plugins.datasets import (atlas, dermamnist, folder, ham10000, isic2016, kaggle_dr, ph2, synthetic,
                                  synthetic_fundus)

    for name, module, needs_root in (
        ("isic2016", isic2016, True),
        ("atlas", atlas, True),
        ("ham10000", ham10000, True),
        ("kaggle-dr", kaggle_dr, True),
        ("dermamnist", dermamnist, False),
        ("ph2", ph2, True),
        ("folder", folder, True),
        ("synthetic", synthetic, False),
        ("synthetic-fundus", synthetic_fundus, False),
    ):
        register(DatasetAdapter(name, module.DESCRIPTION, module.load, needs_root=needs_root))
