"""Units of work: one frozen dataclass per kind (train a source stage, fine-tune, extract, store a trunk's
activations, evaluate, report).

The CLI builds one from its options; a study plans many (`bench.study.plan`). Either hands it, with a `Context`, to the
one function of its kind: `bench.train.jobs.train_source` / `finetune`, `bench.extract.pipeline.prepare`,
`bench.train.trunk.prepare`, `bench.evaluate.score.evaluate`. A unit's fields are everything its output depends on,
and a few settings marked `HOW` that change only how it runs (a root folder, a batch size). `params`, what the
study runner fingerprints, is computed here and nowhere else: it leaves out the `HOW` fields, and the `LATER` fields
(added after studies were published) while they keep their default, so a published study's ledger stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench import paths
from bench.errors import BenchError
from bench.train.recipes import Recipe
from featurestore.keys import feature_key
from protocols.stats import TEST_DRAWS
from protocols.svm import SOLVER

if TYPE_CHECKING:
    import pandas as pd

    from bench.context import Context

EXTERNAL = "external"  # the split of an evaluation scored on all of its dataset, trained on another
HOW = {"how": True}  # not part of the unit's identity
LATER = {"later": True}  # part of its identity only when not at its default
# `weights` (a file the user names with --weights) is LATER, not HOW: the store does check a set against the ONNX
# digest its weights make, but a study's runner skips a unit by its fingerprint before any export, so two units
# differing only in their weights file must not share one; like every path it counts as its text


def identity(value: Any) -> Any:
    """A unit (or a value in it) as its fingerprint sees it."""
    if isinstance(value, Recipe):
        return value.to_dict()
    if is_dataclass(value):
        return {f.name: identity(getattr(value, f.name)) for f in fields(value)
                if not f.metadata.get("how") and not (f.metadata.get("later") and getattr(value, f.name) == f.default)}
    return value


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as a unit reads it: its name (a study's own name for it; the adapter's on the command line), the
    adapter and its options, and where its files lie (not identity: results do not depend on where files lie)."""

    name: str
    adapter: str
    options: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # a source stage trains on the first N manifest rows only
    root: Path | None = field(default=None, metadata=HOW)

    @classmethod
    def of(cls, adapter: str, root: Path | None = None, options: dict[str, str] | None = None,
           limit: int | None = None) -> DatasetRef:
        """A dataset named by its adapter, as the command line names it."""
        return cls(adapter, adapter, dict(options or {}), limit, root)

    @property
    def synthetic(self) -> bool:
        return self.adapter.startswith("synthetic")

    def manifest(self, ctx: Context) -> pd.DataFrame:
        return ctx.registry.dataset(self.adapter).manifest(self.root, **self.options)


@dataclass(frozen=True)
class Work:
    """One unit of work; `deps` are the keys of the study units whose outputs it reads."""

    kind: ClassVar[str]
    runs_network: ClassVar[bool] = False  # loads weights and runs torch: a GPU on a cluster that has one
    deps: tuple[str, ...] = field(default=(), kw_only=True, metadata=HOW)

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        return identity(self)


@dataclass(frozen=True)
class TrainSource(Work):
    """Train `backbone`'s source stage on `dataset`, starting from `start`'s weights; its output becomes
    `backbone`'s initial weights."""

    kind: ClassVar[str] = "source"
    runs_network: ClassVar[bool] = True
    backbone: str
    start: str
    dataset: DatasetRef
    recipe: Recipe
    seed: int = 0
    weights: Path | None = field(default=None, metadata=LATER)  # `start`'s weights, instead of its initial ones

    @classmethod
    def of(cls, ctx: Context, backbone: str, dataset: DatasetRef, recipe: Recipe, seed: int = 0,
           weights: Path | None = None) -> TrainSource:
        """The source stage the backbone declares for `dataset` (as `bench train` without --fold asks for it)."""
        stages = ctx.registry.backbone(backbone).source_stages
        stage = next((s for s in stages if s.dataset == dataset.adapter), None)
        if stage is None and stages:
            raise BenchError(f"{backbone}'s source stage trains on {', '.join(s.dataset for s in stages)}, not "
                             f"{dataset.adapter}; to fine-tune on {dataset.adapter} give --protocol P --fold K")
        if stage is None:
            raise BenchError(f"{backbone} has no source stage; to fine-tune it on {dataset.adapter} give "
                             "--protocol P --fold K")
        return cls(backbone, stage.start, dataset, recipe, seed, weights)

    @property
    def key(self) -> str:
        return source_key(self.backbone)

    def output(self, ctx: Context) -> Path:
        return paths.weights_dir(ctx.home) / ctx.registry.backbone(self.backbone).source_stages[0].output


@dataclass(frozen=True)
class FineTune(Work):
    """Fine-tune `backbone` on the training part of `fold` with `protocol`'s classes."""

    kind: ClassVar[str] = "finetune"
    runs_network: ClassVar[bool] = True
    backbone: str
    dataset: DatasetRef
    protocol: str
    split: str
    fold: str
    recipe: Recipe
    seed: int = 0
    reference: Path | None = None  # fingerprinted as its text, like every path
    limit: int | None = field(default=None, metadata=LATER)  # the first N training rows only
    weights: Path | None = field(default=None, metadata=LATER)  # start from this file, not the initial weights

    @property
    def key(self) -> str:
        return f"finetune {self.dataset.name}/{self.backbone}/{feature_key(self.protocol, self.fold)}"

    def checkpoint(self, ctx: Context) -> Path:
        return paths.finetuned_checkpoint(ctx.home, self.dataset.adapter, self.backbone, self.protocol, self.fold)


@dataclass(frozen=True)
class Extract(Work):
    """Export `backbone` (fine-tuned on `fold` when given) to ONNX and fill its feature set."""

    kind: ClassVar[str] = "extract"
    runs_network: ClassVar[bool] = True
    backbone: str
    dataset: DatasetRef
    protocol: str | None = None
    fold: str | None = None
    tta: str | None = field(default=None, metadata=LATER)  # test-time augmentation (bench.extract.tta)
    # a fine-tune of a recipe with a view pool: its top on view 0 of the stored trunk activations, no image read
    # (equal to the model's features within float16's precision of those activations)
    from_trunk: bool = field(default=False, metadata=LATER)
    weights: Path | None = field(default=None, metadata=LATER)  # the frozen model's weights, not its initial ones
    batch_size: int = field(default=32, metadata=HOW)
    skip_bad: bool = field(default=False, metadata=HOW)  # leave unreadable images out instead of failing
    overwrite: bool = field(default=False, metadata=HOW)  # replace a set made by another model or images
    rows_per_chunk: int | None = field(default=None, metadata=HOW)  # a new set's chunk length

    @property
    def key(self) -> str:
        return f"extract {self.dataset.name}/{self.backbone}/{self.set_key}"

    @property
    def set_key(self) -> str:
        """The feature set it fills."""
        return feature_key(self.protocol, self.fold, self.tta)


@dataclass(frozen=True)
class ExtractTrunk(Work):
    """Store the frozen trunk's activations of a pool of `views` views of every image of `dataset` (view 0 as it is,
    the others augmented with draws seeded by `seed`): the trunk of `backbone` whose top is its last `train_last`
    layers, at `image_size` px. Every fine-tune of a recipe with this cut, size and pool trains from it
    (bench.train.top), whatever its epochs, learning rate, design or fold."""

    kind: ClassVar[str] = "trunk"
    runs_network: ClassVar[bool] = True
    backbone: str
    dataset: DatasetRef
    train_last: int
    image_size: int
    views: int
    seed: int = 0
    weights: Path | None = None  # the weights the fine-tunes start from, instead of the backbone's initial ones
    batch_size: int = field(default=32, metadata=HOW)
    overwrite: bool = field(default=False, metadata=HOW)  # replace a set made by another model or for other images

    @classmethod
    def of(cls, backbone: str, dataset: DatasetRef, recipe: Recipe, seed: int = 0, weights: Path | None = None,
           **how: Any) -> ExtractTrunk:
        """The trunk pass the fine-tunes of `recipe` (one with a view pool) read."""
        if not recipe.views or recipe.train_last is None:
            raise BenchError(f"recipe {recipe.name} trains {backbone} without a view pool (`views`, and "
                             "`train_last`): it has no trunk activations to store; give a recipe with both")
        return cls(backbone, dataset, recipe.train_last, recipe.image_size, recipe.views, seed, weights, **how)

    @property
    def key(self) -> str:
        return (f"trunk {self.dataset.name}/{self.backbone}/last{self.train_last}-{self.image_size}px-{self.views}v"
                f"-s{self.seed}")


@dataclass(frozen=True)
class Evaluate(Work):
    """Score a backbone's features (frozen, or each fold's fine-tuned set) with the SVM protocol on `folds`."""

    kind: ClassVar[str] = "evaluate"
    backbone: str
    dataset: DatasetRef
    protocol: str
    split: str = "5x2"
    folds: tuple[str, ...] = ()  # only these folds of the split; empty: every fold
    finetuned: bool = False
    seed: int = 0
    svm: str = SOLVER
    reference: Path | None = None  # the paper's fold files, for split "reference"
    tta: str | None = field(default=None, metadata=LATER)  # score the sets extracted with this TTA
    power: bool = field(default=False, metadata=LATER)  # signed square root of every feature before L2
    keep_duplicate_folds: bool = field(default=False, metadata=LATER)  # reference split: run repeated partitions
    # external evaluation: the SVM also learns on all of this dataset (split "external": on it alone, scored on
    # all of `dataset`; else with each fold's training part of `dataset`, scored on its test part)
    train_dataset: DatasetRef | None = field(default=None, metadata=LATER)
    drop_overlap: bool = field(default=False, metadata=LATER)  # leave out test images that are training pictures

    @property
    def target(self) -> str:
        """What its rows call the dataset: `A -> B` where the SVM learns on A and is scored on B."""
        return f"{self.train_dataset.adapter} -> {self.dataset.adapter}" if self.train_dataset else self.dataset.adapter

    @property
    def features(self) -> str:
        """What its results rows call the features: the backbone(s), then what was done to them."""
        from bench.evaluate.features import display_name

        return display_name(self.backbone, self.tta, self.power)

    @property
    def key(self) -> str:
        data = f"{self.train_dataset.name}->{self.dataset.name}" if self.train_dataset else self.dataset.name
        partition = f" seed {self.seed}" if self.seed else ""  # another seed's partitions; seed 0's keys as published
        return f"evaluate {data}/{self.features}/{self.protocol}/{'ft' if self.finetuned else 'frozen'}{partition}"

    def command(self, store: str | None = None) -> str:
        """The `bench evaluate` command line that regenerates this evaluation's rows (`store`: a store that is
        not the default one)."""
        import shlex

        args = ["bench", "evaluate", "--protocol", self.protocol, "--dataset", self.dataset.adapter,
                "--backbone", self.backbone]
        args += ["--split", self.split] if self.split != EXTERNAL else []  # external: the default with a training set
        args += ["--finetuned"] * self.finetuned + ["--keep-duplicate-folds"] * self.keep_duplicate_folds
        args += ["--seed", str(self.seed)] if self.seed else []
        args += ["--root", str(self.dataset.root)] if self.dataset.root else []
        args += ["--store", store] if store else []
        args += ["--reference-dir", str(self.reference)] if self.reference else []
        for key, value in self.dataset.options.items():
            args += ["--option", f"{key}={value}"]
        if self.train_dataset:
            train = self.train_dataset
            args += ["--train-dataset", train.adapter] + (["--train-root", str(train.root)] if train.root else [])
            for key, value in train.options.items():
                args += ["--train-option", f"{key}={value}"]
        args += ["--drop-overlap"] * self.drop_overlap
        for fold in self.folds:
            args += ["--fold", fold]
        args += ["--tta", self.tta] if self.tta else []
        args += ["--power-norm"] * self.power
        return shlex.join(args)


@dataclass(frozen=True)
class Report(Work):
    """A study's leaderboard and report, from every evaluation (run by the study, which holds their results)."""

    kind: ClassVar[str] = "report"
    study: str
    bootstrap_draws: int = field(default=TEST_DRAWS, metadata=LATER)
    # what the report shows beyond the evaluations' results, so that changing it renders the report again: the
    # study's description, Table 1's columns, Table 3's architectures and the baseline of the levers table
    description: str = ""
    transfer: tuple[tuple[str, str], ...] = ()
    architectures: tuple[str, ...] = ()
    baseline: str | None = None
    # candidates added or changed since confirmation started, with why (`bench.study.plan.changed_since`)
    flagged: tuple[tuple[str, str], ...] = field(default=(), metadata=LATER)

    @property
    def key(self) -> str:
        return "report"


def trunk_pass(unit: TrainSource | FineTune, ctx: Context) -> ExtractTrunk | None:
    """The trunk pass a training unit reads, None where it trains the whole network: over its dataset, through the
    backbone it starts from (a source stage's start, else its own) with the weights it starts from, with its
    recipe's cut, size and view pool."""
    start = unit.start if isinstance(unit, TrainSource) else unit.backbone
    recipe = unit.recipe.starting_from(ctx.registry.backbone(start).random_init)
    return ExtractTrunk.of(start, unit.dataset, recipe, unit.seed, unit.weights) if recipe.views else None


def weights_file(weights: Path | None) -> Path | None:
    """`weights` where it is a file; one line naming it and the fix where it is not (checked before any work)."""
    if weights is not None and not Path(weights).is_file():
        raise BenchError(f"weights file not found: {weights}. Pass an existing file (a safetensors file or a torch "
                         "state dict) with --weights PATH")
    return weights


def source_key(backbone: str) -> str:
    return f"source {backbone}"
