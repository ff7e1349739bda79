"""The hooks a bench plugin implements. Built-ins in `plugins/` use exactly these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # a plugin imports what it registers; the hooks themselves import nothing heavy
    from bench.backbone import Backbone
    from bench.dataset import DatasetAdapter

hookspec = pluggy.HookspecMarker("bench")
hookimpl = pluggy.HookimplMarker("bench")


@hookspec
def bench_register_backbones(register: Callable[[Backbone], None]) -> None:
    """Call `register(Backbone(...))` once per backbone the plugin provides."""


@hookspec
def bench_register_datasets(register: Callable[[DatasetAdapter], None]) -> None:
    """Call `register(DatasetAdapter(...))` once per dataset adapter the plugin provides."""


@hookspec(firstresult=True)
def bench_backbone_named(name: str) -> Backbone | None:
    """The backbone a prefixed name `PREFIX:REST` stands for (e.g. `timm:convnext_atto`), or None when the prefix
    is not this plugin's. Called only for names no plugin registers, when one is asked for; the first answer wins.
    Raise BenchError (one line, saying the fix) when the prefix is yours but the name is not."""
