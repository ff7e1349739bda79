"""Where a study's work lives and what its units run with: the study folder, and the context (the folder's own
home, its store, the backbones the study defines beside the installed ones)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.backbone import Backbone, SourceStage
from bench.context import Context, Registry
from bench.errors import BenchError
from bench.study.schema import Study


@dataclass(frozen=True)
class Workspace:
    """Everything one study makes lives under `out`, so a study folder is self-contained."""

    out: Path

    @property
    def home(self) -> Path:
        return self.out / "home"

    @property
    def store(self) -> Path:
        return self.out / "features.zarr"

    @property
    def results(self) -> Path:
        return self.out / "results.csv"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.csv"

    @property
    def leaderboard(self) -> Path:
        return self.out / "leaderboard.md"

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @property
    def ledger(self) -> Path:
        return self.out / "ledger.json"

    @property
    def log(self) -> Path:
        return self.out / "log.jsonl"

    def context(self, study: Study) -> Context:
        """What the study's units run with: trained weights and checkpoints in this folder's home, features in its
        store, and the study's own backbones beside the installed ones."""
        return Context(self.home, str(self.store), Registry({b.name: b for b in defined_backbones(study)}))


def defined_backbones(study: Study) -> list[Backbone]:
    """The study's own backbones as plugin objects, in definition order (each `like` exists before it).

    They run at the study recipe's image size, frozen as well as fine-tuned, so that a column "without FT" and
    its "with FT" see the same pixels (an installed backbone's frozen features use its own input size).
    """
    made: dict[str, Backbone] = {}
    registry = Registry(made)  # sees the backbones defined so far
    for spec in study.backbones.values():
        like = registry.backbone(spec.like)
        common = {"name": spec.name, "preprocessing": like.preprocessing.with_size(study.recipe.image_size)}
        if spec.random:
            backbone = dataclasses.replace(like, **common, load_initial=None, random_init=True,
                                           initial_weights=f"random ({like.architecture}'s own initialisation)")
        elif spec.source:
            adapter = study.datasets[spec.source].adapter
            backbone = dataclasses.replace(
                like, **common, initial_weights=f"{like.name}'s, trained on {adapter} by the study", random_init=False,
                load_initial=functools.partial(_not_trained_yet, spec.name),
                source_stages=(SourceStage(dataset=adapter, task=f"{adapter} labels", start=like.name,
                                           output=f"{spec.name}.pt"),))
        else:
            backbone = dataclasses.replace(like, **common, initial_weights=f"{like.name}'s")
        made[spec.name] = backbone
    return list(made.values())


def _not_trained_yet(backbone: str, net: Any) -> None:
    """A study backbone's weights come from its source stage, loaded as a file (`Context.source_weights`) once
    the stage has run."""
    raise BenchError(f"{backbone} is made by its study's source stage, which has not run: run the study")
