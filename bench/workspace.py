"""Where a study's work lives and what a process needs to do it: the study folder, the study's own BENCH_HOME
(with the user's caches linked in) and the backbones the study defines, registered for the run."""

from __future__ import annotations

import dataclasses
import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import paths, plugins
from bench.backbone import Backbone, SourceStage, load_state_dict_file
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.study import Study


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


@contextmanager
def worker_env(home: Path, study: Study) -> Iterator[None]:
    """What every process running the study's stages needs: its BENCH_HOME and its backbones."""
    with bench_home(home), study_backbones(study):
        yield


@contextmanager
def bench_home(home: Path) -> Iterator[None]:
    """BENCH_HOME pointed at the study's own folder for the duration of the run, restored afterwards."""
    before = os.environ.get("BENCH_HOME")
    os.environ["BENCH_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BENCH_HOME", None)
        else:
            os.environ["BENCH_HOME"] = before


class _StudyBackbones:
    """A plugin, registered for the run, providing the backbones the study defines."""

    def __init__(self, study: Study):
        self.backbones = defined_backbones(study)

    @hookimpl
    def bench_register_backbones(self, register: Callable[[Backbone], None]) -> None:
        for backbone in self.backbones:
            register(backbone)


@contextmanager
def study_backbones(study: Study) -> Iterator[None]:
    manager = plugins.plugin_manager()
    name = f"study {study.name}"
    manager.register(_StudyBackbones(study), name=name)
    try:
        yield
    finally:
        manager.unregister(name=name)


def defined_backbones(study: Study) -> list[Backbone]:
    """The study's own backbones as plugin objects, in definition order (each `like` exists before it).

    They run at the study recipe's image size, frozen as well as fine-tuned, so that a column "without FT" and
    its "with FT" see the same pixels (an installed backbone's frozen features use its own input size).
    """
    made: dict[str, Backbone] = {}
    for spec in study.backbones.values():
        like = made.get(spec.like) or plugins.get_backbone(spec.like)
        common = {"name": spec.name, "preprocessing": like.preprocessing.with_size(study.recipe.image_size)}
        if spec.random:
            backbone = dataclasses.replace(like, **common, load_initial=None, random_init=True,
                                           initial_weights=f"random ({like.architecture}'s own initialisation)")
        elif spec.source:
            adapter = study.datasets[spec.source].adapter
            output = f"{spec.name}.pt"
            backbone = dataclasses.replace(
                like, **common, initial_weights=f"{like.name}'s, trained on {adapter} by the study", random_init=False,
                load_initial=functools.partial(_load_source_output, output, spec.name),
                source_stages=(SourceStage(dataset=adapter, task=f"{adapter} labels", start=like.name,
                                           output=output),))
        else:
            backbone = dataclasses.replace(like, **common, initial_weights=f"{like.name}'s")
        made[spec.name] = backbone
    return list(made.values())


def _load_source_output(output: str, backbone: str, net: Any) -> None:
    path = paths.weights_dir() / output
    if not path.is_file():
        raise BenchError(f"{path} not found: {backbone} is made by its study's source stage; run the study")
    load_state_dict_file(net, path)


def share_caches(user_home: Path, home: Path, study: Study) -> None:
    """Link what is a cache or an import, not a result, from the user's BENCH_HOME: generated and downloaded
    datasets (keyed by their parameters) and imported weights (e.g. ImageNet VGG-M); the study's own source
    stages write theirs here."""
    if user_home.resolve() == home.resolve():
        return
    home.mkdir(parents=True, exist_ok=True)
    datasets = home / "datasets"
    if not datasets.exists() and not datasets.is_symlink():
        (user_home / "datasets").mkdir(parents=True, exist_ok=True)
        datasets.symlink_to((user_home / "datasets").resolve(), target_is_directory=True)
    made_here = {f"{b}.pt" for b in study.backbones} | {plugins.get_backbone(b).source_stages[0].output
                                                        for b in study.sources}
    weights = home / "weights"
    for file in sorted((user_home / "weights").glob("*")) if (user_home / "weights").is_dir() else []:
        link = weights / file.name
        if file.is_file() and file.name not in made_here and not link.exists():
            weights.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file.resolve())
