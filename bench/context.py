"""What a unit of work runs with, passed explicitly: where bench keeps what it makes, the feature store, and the
backbones and datasets it may name (the installed plugins, plus a study's own backbones)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from bench import paths, plugins

if TYPE_CHECKING:
    from bench.backbone import Backbone
    from bench.dataset import DatasetAdapter


@dataclass(frozen=True)
class Registry:
    """The backbones and datasets a unit of work may name: the installed plugins' and, for a study, its own."""

    own: Mapping[str, Backbone] = field(default_factory=dict)  # a study's backbones (they shadow no installed one)

    def backbone(self, name: str) -> Backbone:
        return plugins.get_backbone(name, self.own)

    def backbones(self) -> dict[str, Backbone]:
        return {**plugins.backbones(), **self.own}

    def dataset(self, name: str) -> DatasetAdapter:
        return plugins.get_dataset(name)


@dataclass(frozen=True)
class Context:
    """`home` holds trained weights (`weights/`), fine-tuned checkpoints (`models/`), training runs and the ONNX
    cache: the user's `$BENCH_HOME` for a command, the study's own folder for a study."""

    home: Path
    store: str  # a folder or an fsspec URL (a Path would turn s3://b into s3:/b)
    registry: Registry = field(default_factory=Registry)

    @classmethod
    def for_user(cls, store: str | None = None) -> Context:
        """A command's context: the user's home and the store `--store` names (else the default one)."""
        return cls(paths.home(), store or paths.default_store())

    def source_weights(self, backbone: Backbone) -> Path | None:
        """The trained source stage's weights of `backbone` here, if it has one and it was trained."""
        if not backbone.source_stages:
            return None
        path = paths.weights_dir(self.home) / backbone.source_stages[-1].output
        return path if path.is_file() else None
