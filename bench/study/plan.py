"""What a study runs: its data (manifests, folds, content fingerprints) and the units of work (`bench.work`) it
expands to, each planned once however many evaluations read it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bench import paths
from bench.context import Context
from bench.errors import BenchError
from bench.evaluate.features import parse
from bench.study.schema import Study, stored_backbones
from bench.work import (EXTERNAL, DatasetRef, Evaluate, Extract, FineTune, Report, TrainSource, Work, source_key,
                        trunk_pass)


# --- the study's data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyData:
    """The manifests of the study's datasets, loaded once: their content fingerprints and the fold keys."""

    study: Study
    manifests: dict[str, Any]
    fingerprints: dict[str, str]
    fold_keys: dict[int, list[str]]
    imported: dict[str, str]  # weights the study reads from the user's home: name -> size and modification time

    @classmethod
    def load(cls, study: Study, ctx: Context) -> StudyData:
        from bench.dataset import fingerprint as dataset_fingerprint
        from protocols.splits import make_folds

        manifests = {name: spec.manifest(ctx) for name, spec in study.datasets.items()}
        fold_keys = {}
        for i, evaluation in enumerate(study.evaluations):
            if evaluation.split == EXTERNAL:
                fold_keys[i] = ["all"]
                continue
            folds = make_folds(manifests[evaluation.dataset], evaluation.split, seed=study.seed,
                               reference_dir=evaluation.reference, protocol=evaluation.protocols[0])
            unknown = [f for f in evaluation.folds or () if f not in folds]
            if unknown:
                raise BenchError(f"{study.path}: evaluate[{i}].folds: {unknown} are not folds of split "
                                 f"{evaluation.split!r}; it has {', '.join(folds)}")
            fold_keys[i] = list(evaluation.folds or folds)
        fingerprints = {name: dataset_fingerprint(m) for name, m in manifests.items()}
        return cls(study, manifests, fingerprints, fold_keys, _imported_weights(study, ctx))

    def identity(self, work: Work) -> dict[str, Any]:
        """What a unit depends on beyond its parameters: the data it reads and the code that reads it."""
        import bench

        dataset: DatasetRef | None = getattr(work, "dataset", None)
        identity = {"bench": bench.__version__, "data": self.fingerprints.get(dataset.name) if dataset else None}
        if work.runs_network:  # the units that load initial weights
            identity["imported_weights"] = self.imported
        return identity


def _imported_weights(study: Study, ctx: Context) -> dict[str, str]:
    """The weights files of the user's home a study may load (e.g. ImageNet VGG-M), by size and modification
    time; the ones the study trains itself are its own."""
    made_here = {f"{b}.pt" for b in study.backbones} | {ctx.registry.backbone(b).source_stages[0].output
                                                        for b in study.sources}
    folder = paths.weights_dir(paths.home())
    files = sorted(f for f in folder.glob("*") if f.is_file() and f.name not in made_here) if folder.is_dir() else []
    return {f.name: f"{f.stat().st_size}-{f.stat().st_mtime_ns}" for f in files}


# --- the graph of units -----------------------------------------------------------------------------------------

def plan(study: Study, fold_keys: dict[int, list[str]], ctx: Context) -> list[Work]:
    """Every unit of the study in dependency order. `fold_keys[i]` are the folds evaluation i runs on.

    A unit that several evaluations read (an extraction, a fine-tune, a trunk pass) is planned once."""
    units: dict[str, Work] = {}

    def add(work: Work) -> str:
        units.setdefault(work.key, work)
        return work.key

    def add_trained(work: TrainSource | FineTune) -> tuple[str, ...]:
        """A training unit, after the trunk pass it reads if its recipe has a view pool; their keys."""
        trunk = trunk_pass(work, ctx)
        if trunk is None:
            return (add(work),)
        reads = add(replace(trunk, deps=work.deps))  # made from the weights the training starts from
        return reads, add(replace(work, deps=(*work.deps, reads)))

    # installed backbones' sources first: a study-defined backbone may start from one (`like = "retino"`)
    for backbone in [*study.sources, *(b for b, spec in study.backbones.items() if spec.source)]:
        add_trained(_train_source(study, backbone, ctx))
    evaluations: list[Evaluate] = []
    for i, spec in enumerate(study.evaluations):
        dataset = study.datasets[spec.dataset]
        train = study.datasets[spec.train] if spec.train else None
        folds = () if spec.split == EXTERNAL else tuple(fold_keys[i])
        common = dict(split=spec.split, folds=folds, seed=study.seed, reference=spec.reference)
        common |= {"train_dataset": train} if train else {}
        for features in spec.frozen:  # e.g. `A@448+B [tta dihedral, power]`: each member's set, then its SVM
            backbone, tta, power = parse(features)
            extracts = tuple(add(Extract(member, data, tta=tta, deps=_weights_stage(study, member)))
                             for member in stored_backbones(backbone) for data in (train, dataset) if data)
            evaluations += [Evaluate(backbone, dataset, protocol, tta=tta, power=power, deps=extracts, **common)
                            for protocol in spec.protocols]
        for backbone in spec.finetuned:
            for protocol in spec.protocols:
                extracts = []
                for fold in folds:
                    trained = add_trained(FineTune(backbone, dataset, protocol, spec.split, fold,
                                                   study.recipe_for(backbone), study.seed, spec.reference,
                                                   deps=_weights_stage(study, backbone)))
                    # from a trunk set: the top on its view 0, the images not read again
                    extracts.append(add(Extract(backbone, dataset, protocol, fold, from_trunk=len(trained) > 1,
                                                deps=trained)))
                evaluations.append(Evaluate(backbone, dataset, protocol, finetuned=True, deps=tuple(extracts),
                                            **common))
    for work in evaluations:
        add(work)
    add(Report(study.name, study.bootstrap_draws, deps=tuple(e.key for e in evaluations)))
    return list(units.values())


def _weights_stage(study: Study, backbone: str) -> tuple[str, ...]:
    """The source stage that makes `backbone`'s initial weights, as a dependency, if the study trains them."""
    made_by = study.weights_from(backbone)
    return (source_key(made_by),) if made_by else ()


def source_start(study: Study, backbone: str, ctx: Context) -> str:
    """The backbone a source stage starts from: a defined backbone's `like`, an installed one's stage start."""
    spec = study.backbones.get(backbone)
    return spec.like if spec else ctx.registry.backbone(backbone).source_stages[0].start


def _train_source(study: Study, backbone: str, ctx: Context) -> TrainSource:
    start = source_start(study, backbone, ctx)
    return TrainSource(backbone, start, study.datasets[study.source_dataset(backbone)], study.recipe_for(start),
                       study.seed, deps=_weights_stage(study, start))
