"""The built-in dataset adapters, registered through the same hook as a third-party plugin's."""

from typing import Callable

from bench.dataset import DatasetAdapter
from bench.hookspecs import hookimpl
from plugins.datasets import synthetic


@hookimpl
def bench_register_datasets(register: Callable[[DatasetAdapter], None]) -> None:
    register(DatasetAdapter("synthetic", synthetic.DESCRIPTION, synthetic.load, needs_root=False))
