"""What a study runs: its data (manifests, folds, content fingerprints) and the typed stages it expands to.

One frozen dataclass per kind of stage. Its fields are everything the stage's output depends on besides the
stages it reads (`deps`), so `params` (its fields as a dict) is what the runner fingerprints; the key, which names
the stage in the ledger and on screen, follows from the fields too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench import paths, plugins
from bench.errors import BenchError
from bench.features import label, parse
from bench.recipes import Recipe
from bench.study import DatasetSpec, Evaluation, Study, stored_backbones
from bench.tta import key as tta_key
from protocols.stats import TEST_DRAWS
from protocols.svm import SOLVER


@dataclass(frozen=True)
class DatasetRef:
    """A study dataset as a stage reads it (not its root: results do not depend on where the files lie)."""

    name: str  # the study's own name for it
    adapter: str
    options: dict[str, str]
    limit: int | None

    @classmethod
    def of(cls, spec: DatasetSpec) -> DatasetRef:
        return cls(spec.name, spec.adapter, spec.options, spec.limit)


@dataclass(frozen=True)
class Stage:
    """One unit of work of a study; `deps` are the keys of the stages whose outputs it reads."""

    kind: ClassVar[str]
    runs_network: ClassVar[bool] = False  # loads initial weights and runs torch: a GPU on a cluster that has one
    deps: tuple[str, ...] = field(default=(), kw_only=True)

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """The fields the fingerprint hashes: all but `deps` (a recipe as `Recipe.to_dict` gives it)."""
        params = asdict(self)
        del params["deps"]
        if "recipe" in params:
            params["recipe"] = self.recipe.to_dict()
        return params


@dataclass(frozen=True)
class TrainSource(Stage):
    """Train `backbone`'s source stage on `dataset`, starting from `start`'s weights."""

    kind: ClassVar[str] = "source"
    runs_network: ClassVar[bool] = True
    backbone: str
    start: str
    dataset: DatasetRef
    recipe: Recipe
    seed: int

    @property
    def key(self) -> str:
        return source_key(self.backbone)


@dataclass(frozen=True)
class FineTune(Stage):
    """Fine-tune `backbone` on the training part of `fold` with `protocol`'s classes."""

    kind: ClassVar[str] = "finetune"
    runs_network: ClassVar[bool] = True
    backbone: str
    dataset: DatasetRef
    protocol: str
    split: str
    fold: str
    recipe: Recipe
    seed: int
    reference: Path | None  # fingerprinted as its text, like every path

    @property
    def key(self) -> str:
        return f"finetune {self.dataset.name}/{self.backbone}/{paths.feature_key(self.protocol, self.fold)}"


@dataclass(frozen=True)
class Extract(Stage):
    """Export `backbone` (fine-tuned on `fold` when given) to ONNX and fill its feature set."""

    kind: ClassVar[str] = "extract"
    runs_network: ClassVar[bool] = True
    backbone: str
    dataset: DatasetRef
    protocol: str | None
    fold: str | None
    tta: str | None = None  # test-time augmentation (bench.tta)

    @property
    def key(self) -> str:
        return f"extract {self.dataset.name}/{self.backbone}/{self.set_key}"

    @property
    def set_key(self) -> str:
        """The feature set it fills."""
        return tta_key(paths.feature_key(self.protocol, self.fold), self.tta)

    @property
    def params(self) -> dict[str, Any]:
        return _unless_default(super().params, tta=None)


@dataclass(frozen=True)
class Evaluate(Stage):
    """Score a backbone's features (frozen, or each fold's fine-tuned set) with the SVM protocol on `folds`."""

    kind: ClassVar[str] = "evaluate"
    backbone: str
    dataset: DatasetRef
    protocol: str
    split: str
    folds: tuple[str, ...]
    finetuned: bool
    seed: int
    svm: str
    reference: Path | None
    tta: str | None = None  # score the sets extracted with test-time augmentation
    power: bool = False  # signed square root of every feature before L2 normalisation

    @property
    def label(self) -> str:
        """What its results rows call the features: the backbone(s), then what was done to them."""
        return label(self.backbone, self.tta, self.power)

    @property
    def key(self) -> str:
        return f"evaluate {self.dataset.name}/{self.label}/{self.protocol}/{'ft' if self.finetuned else 'frozen'}"

    @property
    def params(self) -> dict[str, Any]:
        return _unless_default(super().params, tta=None, power=False)


@dataclass(frozen=True)
class Report(Stage):
    """The study's leaderboard and report, from every evaluation."""

    kind: ClassVar[str] = "report"
    study: str
    bootstrap_draws: int = TEST_DRAWS

    @property
    def key(self) -> str:
        return "report"

    @property
    def params(self) -> dict[str, Any]:
        return _unless_default(super().params, bootstrap_draws=TEST_DRAWS)


def source_key(backbone: str) -> str:
    return f"source {backbone}"


def _unless_default(params: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """`params` less the fields added later that are at their default, so earlier studies keep their
    fingerprints."""
    return {k: v for k, v in params.items() if not (k in defaults and v == defaults[k])}


# --- the study's data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyData:
    """The manifests of the study's datasets, loaded once: their content fingerprints and the fold keys."""

    study: Study
    manifests: dict[str, Any]
    fingerprints: dict[str, str]
    fold_keys: dict[int, list[str]]
    imported: dict[str, str]  # weights linked from the user's BENCH_HOME: name -> size and modification time

    @classmethod
    def load(cls, study: Study) -> StudyData:
        from bench.dataset import fingerprint as dataset_fingerprint
        from protocols.splits import make_folds

        manifests = {name: plugins.get_dataset(spec.adapter).manifest(spec.root, **spec.options)
                     for name, spec in study.datasets.items()}
        fold_keys = {}
        for i, evaluation in enumerate(study.evaluations):
            folds = make_folds(manifests[evaluation.dataset], evaluation.split, seed=study.seed,
                               reference_dir=evaluation.reference, protocol=evaluation.protocols[0])
            unknown = [f for f in evaluation.folds or () if f not in folds]
            if unknown:
                raise BenchError(f"{study.path}: evaluate[{i}].folds: {unknown} are not folds of split "
                                 f"{evaluation.split!r}; it has {', '.join(folds)}")
            fold_keys[i] = list(evaluation.folds or folds)
        fingerprints = {name: dataset_fingerprint(m) for name, m in manifests.items()}
        linked = [f for f in paths.weights_dir().glob("*") if f.is_symlink()]
        imported = {f.name: f"{f.stat().st_size}-{f.stat().st_mtime_ns}" for f in linked if f.exists()}
        return cls(study, manifests, fingerprints, fold_keys, imported)

    def identity(self, stage: Stage) -> dict[str, Any]:
        """What a stage depends on beyond its parameters: the data it reads and the code that reads it."""
        import bench

        dataset: DatasetRef | None = getattr(stage, "dataset", None)
        identity = {"bench": bench.__version__, "data": self.fingerprints.get(dataset.name) if dataset else None}
        if stage.runs_network:  # the stages that load initial weights
            identity["imported_weights"] = self.imported
        return identity


# --- the stage graph ------------------------------------------------------------------------------------------

def plan(study: Study, fold_keys: dict[int, list[str]]) -> list[Stage]:
    """Every stage of the study in dependency order. `fold_keys[i]` are the folds evaluation i runs on.

    A stage that several evaluations read (an extraction, a fine-tune) is planned once."""
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> str:
        stages.setdefault(stage.key, stage)
        return stage.key

    # installed backbones' sources first: a study-defined backbone may start from one (`like = "retino"`)
    for backbone in [*study.sources, *(b for b, spec in study.backbones.items() if spec.source)]:
        add(_train_source(study, backbone))
    evaluations: list[Evaluate] = []
    for i, evaluation in enumerate(study.evaluations):
        dataset = DatasetRef.of(study.datasets[evaluation.dataset])
        folds = tuple(fold_keys[i])
        for features in evaluation.frozen:  # e.g. `A@448+B [tta dihedral, power]`: each member's set, then its SVM
            backbone, tta, power = parse(features)
            extracts = tuple(add(Extract(member, dataset, None, None, tta, deps=_weights_stage(study, member)))
                             for member in stored_backbones(backbone))
            evaluations += [_evaluate(study, evaluation, dataset, backbone, protocol, folds, False, extracts, tta,
                                      power) for protocol in evaluation.protocols]
        for backbone in evaluation.finetuned:
            for protocol in evaluation.protocols:
                extracts = []
                for fold in folds:
                    finetune = add(FineTune(backbone, dataset, protocol, evaluation.split, fold,
                                            study.recipe_for(backbone), study.seed, evaluation.reference,
                                            deps=_weights_stage(study, backbone)))
                    extracts.append(add(Extract(backbone, dataset, protocol, fold, deps=(finetune,))))
                evaluations.append(_evaluate(study, evaluation, dataset, backbone, protocol, folds, True,
                                             tuple(extracts)))
    for stage in evaluations:
        add(stage)
    add(Report(study.name, study.bootstrap_draws, deps=tuple(s.key for s in evaluations)))
    return list(stages.values())


def _weights_stage(study: Study, backbone: str) -> tuple[str, ...]:
    """The source stage that makes `backbone`'s initial weights, as a dependency, if the study trains them."""
    made_by = study.weights_from(backbone)
    return (source_key(made_by),) if made_by else ()


def source_start(study: Study, backbone: str) -> str:
    """The backbone a source stage starts from: a defined backbone's `like`, an installed one's stage start."""
    spec = study.backbones.get(backbone)
    return spec.like if spec else plugins.get_backbone(backbone).source_stages[0].start


def _train_source(study: Study, backbone: str) -> TrainSource:
    start = source_start(study, backbone)
    dataset = DatasetRef.of(study.datasets[study.source_dataset(backbone)])
    return TrainSource(backbone, start, dataset, study.recipe_for(start), study.seed,
                       deps=_weights_stage(study, start))


def _evaluate(study: Study, evaluation: Evaluation, dataset: DatasetRef, backbone: str, protocol: str,
              folds: tuple[str, ...], finetuned: bool, extracts: tuple[str, ...], tta: str | None = None,
              power: bool = False) -> Evaluate:
    return Evaluate(backbone, dataset, protocol, evaluation.split, folds, finetuned, study.seed, SOLVER,
                    evaluation.reference, tta, power, deps=extracts)
