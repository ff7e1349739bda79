"""What a study runs: its data (manifests, folds, content fingerprints) and the units of work (`bench.work`) it
expands to, each planned once however many evaluations read it; and, for a confirmatory study, what confirms which
candidates and the fingerprint of each candidate as it was chosen."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from bench import paths
from bench.context import Context
from bench.errors import BenchError
from bench.evaluate.features import parse
from bench.study.schema import EvaluationSpec, Study, stored_backbones
from bench.work import (EXTERNAL, DatasetRef, Evaluate, Extract, FineTune, Report, TrainSource, Work, source_key,
                        trunk_pass)

# what a unit ran on rather than what was chosen for it: a candidate keeps its fingerprint on other data
DATA_FIELDS = {"dataset", "train_dataset", "split", "folds", "fold", "seed", "reference", "keep_duplicate_folds"}
PICK_RULE = "per fold, the highest validation AUC on the training part; a tie to the candidate listed first"


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
        evaluations += _frozen(study, spec, train, common, add)
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
    for c in confirmations(study):  # the same candidates on data they were not chosen on
        spec = study.evaluations[c.evaluation]
        train = study.datasets[c.train] if c.train else None
        common = dict(split=EXTERNAL, folds=(), seed=c.seed) if train else \
            dict(split="5x2", folds=tuple(fold_keys[c.evaluation]), seed=c.seed)
        evaluations += _frozen(study, spec, train, common, add)
    for work in evaluations:
        add(work)
    add(Report(study.name, study.bootstrap_draws, study.description, tuple(study.transfer.items()),
               study.architectures, study.baseline, deps=tuple(e.key for e in evaluations)))
    return list(units.values())


def _frozen(study: Study, spec: EvaluationSpec, train: DatasetRef | None, common: dict[str, Any],
            add: Callable[[Work], str]) -> list[Evaluate]:
    """The evaluations of `spec`'s frozen features (e.g. `A@448+B [tta dihedral, power]`: each member's set, then
    its SVM), on `spec`'s dataset with the SVM also learning on `train` when given."""
    dataset = study.datasets[spec.dataset]
    common = common | ({"train_dataset": train} if train else {})
    evaluations = []
    for features in spec.frozen:
        backbone, tta, power = parse(features)
        extracts = tuple(add(Extract(member, data, tta=tta, deps=_weights_stage(study, member)))
                         for member in stored_backbones(backbone) for data in (train, dataset) if data)
        evaluations += [Evaluate(backbone, dataset, protocol, tta=tta, power=power, deps=extracts, **common)
                        for protocol in spec.protocols]
    return evaluations


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


# --- confirmation -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Confirmation:
    """Data that confirms evaluation `evaluation`'s frozen candidates: a fresh 5x2 partition of its dataset (`seed`),
    or (`train`) all of its dataset scored by an SVM trained on all of that dataset of the study's."""

    evaluation: int
    seed: int
    train: str | None = None


def confirmations(study: Study) -> list[Confirmation]:
    """What the study's [confirm] table confirms: every 5x2 evaluation on each seed's partitions, and every
    evaluation of dataset B on each external pair A -> B. Refused where it would confirm nothing, repeat development
    data, or meet fine-tuned candidates (their checkpoints and sets are keyed by fold, not by partition)."""
    spec = study.confirm
    if spec is None:
        return []
    found = []
    for i, evaluation in enumerate(study.evaluations):
        if evaluation.split == EXTERNAL:
            continue
        mine = [Confirmation(i, seed) for seed in spec.seeds if evaluation.split == "5x2"]
        mine += [Confirmation(i, study.seed, pair.train) for pair in spec.external
                 if pair.dataset == evaluation.dataset]
        if mine and evaluation.finetuned:
            raise BenchError(f"{study.path}: confirm: evaluate[{i}] lists fine-tuned candidates, which cannot be "
                             "confirmed yet (fine-tuned sets are keyed by fold, not by partition): move them to a "
                             "study without [confirm]")
        found += mine
    if spec.seeds and not any(c.train is None for c in found):
        raise BenchError(f"{study.path}: confirm.seeds: no [[evaluate]] uses split \"5x2\", the split a seed draws "
                         "afresh: drop seeds or add a 5x2 evaluation")
    for k, (train, dataset) in enumerate((pair.train, pair.dataset) for pair in spec.external):
        if train == dataset:
            raise BenchError(f"{study.path}: confirm.external[{k}]: train and dataset are both {train!r}; an external "
                             "pair scores one dataset with an SVM trained on another")
        if any(e.train == train and e.dataset == dataset for e in study.evaluations):
            raise BenchError(f"{study.path}: confirm.external[{k}]: an [[evaluate]] already scores {train} -> "
                             f"{dataset} in development; confirm on a pair the candidates were not chosen on")
        if not any(c.train == train and study.evaluations[c.evaluation].dataset == dataset for c in found):
            raise BenchError(f"{study.path}: confirm.external[{k}].dataset: no [[evaluate]] on {dataset!r} lists "
                             "candidates to confirm: add one, or name a dataset that has one")
    return found


def candidate_name(dataset: str, protocol: str, features: str) -> str:
    """A development candidate as the ledger names it: the study's dataset name, the design, the features."""
    return f"{dataset}/{protocol}/{features}"


def candidates(study: Study, units: list[Work]) -> dict[str, Any]:
    """The candidate list of a confirmatory study with the fingerprint of every choice: per development candidate
    its configuration and everything upstream that trains or extracts it (recipes, source stages, the study's own
    backbone definitions), not the data it ran on; and the rule that picks and tests among them."""
    confirmed = {study.evaluations[c.evaluation].dataset for c in confirmations(study)}
    by_key = {u.key: u for u in units}
    found = {}
    for unit in units:
        if isinstance(unit, Evaluate) and not unit.train_dataset and unit.seed == study.seed \
                and unit.dataset.name in confirmed:
            found[candidate_name(unit.dataset.name, unit.protocol, unit.features)] = _choices(study, unit, by_key)
    return {"rule": {"pick": PICK_RULE, "baseline": study.baseline}, "candidates": found}


def _choices(study: Study, unit: Work, by_key: dict[str, Work]) -> str:
    chain, todo = {}, [unit]
    while todo:
        work = todo.pop()
        chain[work.key] = work
        todo += [by_key[d] for d in work.deps if d not in chain]
    choices = sorted(json.dumps([w.kind, {k: v for k, v in w.params.items()  # a source stage's dataset is a choice
                                          if w.kind == "source" or k not in DATA_FIELDS}], sort_keys=True, default=str)
                     for w in chain.values())
    defined = _definitions(study, [getattr(w, name, "") for w in chain.values() for name in ("backbone", "start")])
    payload = {"choices": choices, "defined": defined, "recipe": study.recipe.to_dict() if defined else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _definitions(study: Study, names: list[str]) -> dict[str, Any]:
    """The study's own backbones that `names` are or start from (they run at the recipe's image size)."""
    found, todo = {}, [n.partition("@")[0] for n in names]
    while todo:
        spec = study.backbones.get(todo.pop())
        if spec and spec.name not in found:
            found[spec.name] = asdict(spec)
            todo.append(spec.like)
    return found


def changed_since(started: dict[str, Any], now: dict[str, Any]) -> dict[str, str]:
    """Candidates whose choice is not the one recorded when confirmation started, each with why."""
    if started["rule"] != now["rule"]:
        return dict.fromkeys(now["candidates"], "baseline or pick rule changed after confirmation started")
    before = started["candidates"]
    return {name: "added after confirmation started" if name not in before else "changed after confirmation started"
            for name, fingerprint in now["candidates"].items() if before.get(name) != fingerprint}
