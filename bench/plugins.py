"""The plugin manager: built-ins from `plugins/` plus every distribution exposing the `bench` entry-point group."""

from __future__ import annotations

import dataclasses
import os
import warnings
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Mapping, TypeVar

import pluggy

from bench import hookspecs
from bench.errors import BenchError
from featurestore.keys import NAME_RULE, PREFIXED_RULE, is_name, is_prefixed

if TYPE_CHECKING:  # the plugins are imported when first asked for, so a CLI that never asks starts at once
    from bench.backbone import Backbone
    from bench.dataset import DatasetAdapter

ENTRY_POINT_GROUP = "bench"
DISABLE_AUTOLOAD = "BENCH_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = "bench (built-in)"

T = TypeVar("T", "Backbone", "DatasetAdapter")


@cache
def plugin_manager() -> pluggy.PluginManager:
    import plugins.backbones
    import plugins.datasets

    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(hookspecs)
    pm.register(plugins.backbones, name=f"{BUILTIN}: backbones")
    pm.register(plugins.datasets, name=f"{BUILTIN}: datasets")
    if not os.environ.get(DISABLE_AUTOLOAD):
        _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register each third-party plugin; a broken one is skipped with a warning naming its distribution."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ep.value
        try:
            pm.register(ep.load(), name=dist)
        except Exception as exc:  # any import-time failure of someone else's code
            warnings.warn(
                f"bench plugin {ep.name!r} from distribution {dist!r} failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall it, or set {DISABLE_AUTOLOAD}=1.",
                stacklevel=2,
            )


def _collect(hook_name: str, kind: str) -> dict[str, T]:
    found: dict[str, T] = {}
    pm = plugin_manager()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        provider = pm.get_name(impl.plugin)

        def register(item: T, provider: str = provider) -> None:
            if not is_name(item.name):  # a name becomes a folder of the store and of bench's caches
                warnings.warn(f"{kind} {item.name!r} from {provider!r} ignored: names are {NAME_RULE}", stacklevel=2)
                return
            if item.name in found:
                warnings.warn(
                    f"{kind} {item.name!r} from {provider!r} ignored: {found[item.name].plugin!r} already provides it",
                    stacklevel=2,
                )
                return
            found[item.name] = dataclasses.replace(item, plugin=provider)

        try:
            impl.function(register=register)
        except Exception as exc:
            warnings.warn(f"bench plugin {provider!r} failed while registering {kind}s: {exc}", stacklevel=2)
    return dict(sorted(found.items()))


def backbones() -> dict[str, Backbone]:
    return _collect("bench_register_backbones", "backbone")


def datasets() -> dict[str, DatasetAdapter]:
    return _collect("bench_register_datasets", "dataset")


def _get(items: dict[str, T], name: str, kind: str, command: str) -> T:
    if name not in items:
        raise BenchError(f"unknown {kind} {name!r}; available: {', '.join(items)} (see `bench {command}`)")
    return items[name]


def get_backbone(name: str, own: Mapping[str, Backbone] | None = None) -> Backbone:
    """A backbone by name, installed or one of `own` (a study's), or named by a library's prefix (`timm:resnet18`,
    resolved by the `bench_backbone_named` hook); `name@SIZE` is it fed SIZE x SIZE images (e.g.
    `efficientnet-lite1@448` for large images)."""
    base, at, size = name.partition("@")
    known = {**backbones(), **(own or {})}
    backbone = named_backbone(base) if ":" in base and base not in known else _get(known, base, "backbone",
                                                                                  "backbones")
    if not at:
        return backbone
    if not size.isdigit() or not 32 <= int(size) <= 2048:
        raise BenchError(f"backbone {name!r}: the size after @ must be a whole number of pixels, 32 to 2048")
    return backbone.resized(int(size))


@cache
def named_backbone(name: str) -> Backbone:
    """The backbone a prefixed name stands for, from the first plugin that knows its prefix (cached: resolving
    imports the library and reads the model's config)."""
    if not is_prefixed(name):
        raise BenchError(f"backbone {name!r}: a name with a prefix is {PREFIXED_RULE}")
    found = plugin_manager().hook.bench_backbone_named(name=name)
    if found is None:
        raise BenchError(f"no installed plugin knows the prefix of backbone {name!r}: bench knows timm:, hf-hub: and "
                         "open_clip: (see `bench backbones --search PATTERN`)")
    return dataclasses.replace(found, name=name, plugin=found.plugin or BUILTIN)


def get_dataset(name: str) -> DatasetAdapter:
    return _get(datasets(), name, "dataset", "datasets")
