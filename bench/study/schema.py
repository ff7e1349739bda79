"""Study files: a whole benchmark (datasets, source training, fine-tunes, extractions, evaluations) in one small
TOML file (`bench.study.plan` expands it to stages). Each table of the file is a pydantic model (`StudyFile`,
`DatasetTable`, `BackboneTable`, `EvaluationSpec`): a new table is one more model and one more field of
`StudyFile`. Every error is one line naming the file, the key and the fix (`bench.validation`).

A study file (see `bench/studies/*.toml`, listed by `bench studies`):

    description = "..."
    recipe = "cpu"                  # training recipe of every training stage (`bench recipes`)
    seed = 0                        # seeds the splits and every training run
    bootstrap_draws = 10000         # optional: lesion-bootstrap draws behind each paired test in the report
    overrides = { image_size = 96 } # optional: recipe fields changed for this study
    from_scratch = { image_size = 64 }  # optional: recipe fields changed again where a run starts from random weights
    architectures = ["vgg-m", "vgg16"]   # optional: Table 3, backbones compared with ImageNet + fine-tuning

    [datasets.skin]                 # a name used in this file -> adapter, root, adapter options, limit
    adapter = "ham10000"
    root = "../shared/data/ham10000"   # relative to where bench runs, like --root
    limit = 2000                    # optional: the first N manifest rows only

    [sources]                       # installed backbones with a source stage, and the dataset it trains on
    retino = "fundus"

    [backbones.lite0-scratch]       # backbones the study defines from an installed one (`like`):
    like = "efficientnet-lite0"     #   its architecture and preprocessing,
    weights = "random"              #   "random": its architecture's own initialisation; default: like's weights
                                    #   (it runs at the recipe's image size, frozen and fine-tuned alike)
    [backbones.lite0-double]
    like = "efficientnet-lite0"
    source = "fundus"               #   trained on this dataset first (a source stage), starting from like's weights

    [transfer]                      # Table 1: the backbone that plays each source of transfer
    none = "scratch"
    retino = "retino"
    imagenet = "efficientnet-lite0"
    double = "lite0-double"

    [[evaluate]]                    # external: the SVM learns on all of `train`, scored on all of `dataset`
    dataset = "ph2"                 #   (with `split`: on `train` plus each fold's training part)
    train = "skin"
    protocols = ["mela-vs-ben"]
    frozen = ["efficientnet-lite0"]

    [[evaluate]]                    # a target dataset, its split, protocols and what is evaluated on it
    dataset = "skin"
    split = "5x2"
    folds = ["r0f0", "r0f1"]        # optional: a subset of the split's folds
    protocols = ["mal-vs-ben", "mela-vs-ben", "mela-vs-carc-vs-ben"]
    frozen = ["retino", "efficientnet-lite0"]          # features of the backbone as it is (no FT)
    finetuned = ["scratch", "retino", "efficientnet-lite0", "lite0-double"]   # fine-tuned per fold (FT)

    [confirm]                       # optional: data the candidates were not chosen on (see plan.confirmations)
    seeds = [1]                     #   fresh 5x2 partitions of each 5x2 evaluation's dataset
    external = [{ train = "skin", dataset = "ph2" }]   # the SVM learns on all of `train`, scored on all of `dataset`

A training run that starts from random weights trains every layer, whatever the recipe's `train_last` says:
freezing random layers would not be training from scratch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, StrictStr, ValidationInfo, field_validator, model_validator

from bench import plugins
from bench.errors import BenchError
from bench.evaluate.features import members, parse
from bench.paths import check_name
from bench.train.recipes import Recipe, get_recipe
from bench.validation import Table, unknown_key, validate
from bench.work import EXTERNAL, DatasetRef
from featurestore.errors import StoreError
from protocols.stats import TEST_DRAWS

TRANSFER_COLUMNS = ("none", "retino", "imagenet", "double")


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone the study defines: `like`'s architecture and preprocessing, with `like`'s initial weights or
    (random) the architecture's own initialisation, optionally trained on dataset `source` first."""

    name: str
    like: str
    random: bool
    source: str | None  # the name of one of the study's datasets


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    description: str
    recipe: Recipe
    seed: int
    datasets: dict[str, DatasetRef]
    sources: dict[str, str]  # installed backbone with a source stage -> the name of the dataset it trains on
    backbones: dict[str, BackboneSpec]  # in definition order: each `like` is installed or defined before
    transfer: dict[str, str]
    architectures: tuple[str, ...]
    evaluations: tuple[EvaluationSpec, ...]
    baseline: str | None = None  # the frozen evaluation every other one is tested against (a "levers" report)
    bootstrap_draws: int = TEST_DRAWS  # behind each paired test of the report: "< 2/B" must be able to pass Holm
    confirm: ConfirmTable | None = None  # None: the report's claims are exploratory
    # the recipe of a run from random weights, where it differs: the whole network trains, at a size it can afford
    scratch_recipe: Recipe | None = None

    @property
    def synthetic(self) -> bool:
        """Whether any target dataset is synthetic, which the report must say loudly."""
        return any(self.datasets[e.dataset].synthetic for e in self.evaluations)

    def source_dataset(self, backbone: str) -> str | None:
        """The dataset the study trains `backbone`'s source stage on, if it has one (`name@SIZE`: name's)."""
        backbone = backbone.partition("@")[0]
        spec = self.backbones.get(backbone)
        return spec.source if spec else self.sources.get(backbone)

    def weights_from(self, backbone: str) -> str | None:
        """The backbone whose source stage makes `backbone`'s initial weights, if the study trains them."""
        if self.source_dataset(backbone):
            return backbone.partition("@")[0]
        spec = self.backbones.get(backbone.partition("@")[0])
        return self.weights_from(spec.like) if spec and not spec.random else None

    def random_init(self, backbone: str) -> bool:
        """Whether `backbone` starts from random weights (an installed backbone says so itself)."""
        spec = self.backbones.get(backbone.partition("@")[0])
        if spec is None:
            return plugins.get_backbone(backbone).random_init
        if spec.source:
            return False
        return spec.random or self.random_init(spec.like)

    def recipe_for(self, start: str) -> Recipe:
        """The recipe of a training run starting from `start`'s weights: every layer trains from random weights
        (with `from_scratch`'s changes, if the study makes any)."""
        if self.random_init(start):
            return (self.scratch_recipe or self.recipe).starting_from(True)
        return self.recipe


# --- the tables of a study file ---------------------------------------------------------------------------------
# A validator raises ValueError with the fix and pydantic puts the key in front (`evaluate[2].frozen[0]: ...`).
# The validation context holds what names are checked against: the study's datasets and every backbone it may name.

def _bench_error(check: Any, *args: Any) -> Any:
    """`check(*args)`, with its BenchError (or the store's, for a set's key) raised as the ValueError pydantic
    reports at the key."""
    try:
        return check(*args)
    except (BenchError, StoreError) as exc:
        raise ValueError(str(exc)) from None


def _name(what: str) -> AfterValidator:
    """A plain name: it becomes a path component (a checkpoint, a feature set)."""
    return AfterValidator(lambda value: _bench_error(check_name, what, value))


def _study_dataset(value: str, info: ValidationInfo) -> str:
    datasets = info.context["datasets"]
    if value not in datasets:
        raise ValueError(f"{value!r} is not a dataset of this study; it has {', '.join(datasets) or 'none'}")
    return value


def _features(value: str, info: ValidationInfo) -> str:
    """A backbone, or evaluated features such as `A@448+B [tta dihedral, power]`, of backbones the study knows."""
    unknown = [n for n in _bench_error(stored_backbones, value)
               if n.partition("@")[0] not in info.context["backbones"] and not _library_model(n)]
    if unknown:
        raise ValueError(f"unknown backbone {unknown[0]!r}; {_available(info)}")
    return value


def _library_model(name: str) -> bool:
    """Whether `name` is a library's model (`timm:convnext_atto`), resolved as the file is read so that a typo or a
    missing library fails now, not in the middle of the study."""
    if ":" not in name:
        return False
    _bench_error(plugins.get_backbone, name)
    return True


def _one_backbone(value: str, info: ValidationInfo) -> str:
    """A backbone as it is fine-tuned: one, without fusion or TTA."""
    if value != stored_backbones(value)[0]:
        raise ValueError(f"a fine-tuned backbone is one backbone, no fusion or TTA: {value!r}; {_available(info)}")
    return value


def _available(info: ValidationInfo) -> str:
    return (f"available: {', '.join(sorted(info.context['backbones']))} (see `bench backbones`; a study defines its "
            "own under [backbones])")


def _source_backbone(name: str) -> str:
    installed = plugins.backbones()
    if name not in installed or not installed[name].source_stages:
        having = [b.name for b in installed.values() if b.source_stages]
        raise ValueError(f"{name!r} is no installed backbone with a source stage (those are: "
                         f"{', '.join(having) or 'none'}); define new ones under [backbones]")
    return name


def _new_backbone(name: str) -> str:
    if name in plugins.backbones():
        raise ValueError(f"an installed backbone is called {name!r}; name the study's own differently")
    return name


def _enough_draws(draws: int) -> int:
    if draws < 100:
        raise ValueError(f"{draws} draws cannot show a p-value below {2 / max(draws, 1):.2g}; use at least 100 "
                         f"(default {TEST_DRAWS})")
    return draws


DatasetName = Annotated[StrictStr, AfterValidator(_study_dataset)]
Features = Annotated[StrictStr, AfterValidator(_features)]
FineTuned = Annotated[StrictStr, AfterValidator(_features), AfterValidator(_one_backbone)]


class DatasetTable(Table):
    """[datasets.NAME]: an adapter, where its files lie, its options and (a source dataset's) a row limit."""

    adapter: Annotated[StrictStr, AfterValidator(lambda name: _bench_error(plugins.get_dataset, name) and name)] = (
        Field(description="name a dataset adapter (see `bench datasets`)"))
    root: StrictStr | None = None  # relative to where bench runs, like --root
    options: dict[str, Any] = {}  # the adapter's options, e.g. { n = 240 }; it reads them as strings
    limit: Annotated[StrictInt, Field(ge=1)] | None = None  # the first N manifest rows only


class BackboneTable(Table):
    """[backbones.NAME]: a backbone the study defines from an installed one (or one defined above it)."""

    like: StrictStr = Field(description="name an installed backbone (see `bench backbones`) or one defined above")
    weights: Literal["initial", "random"] = "initial"
    source: DatasetName | None = None  # trained on this dataset of the study first (a source stage)

    @model_validator(mode="after")
    def _source_starts_from_like(self) -> BackboneTable:
        if self.source is not None and self.weights == "random":
            raise ValueError("a source stage starts from `like`'s weights: to train from random weights, define the "
                             "random backbone first and name it as `like`")
        return self


class EvaluationSpec(Table):
    """An [[evaluate]] table: a target dataset (a name of the study's), its split and what is evaluated there."""

    dataset: DatasetName = Field(description="name the dataset of this study it scores")
    train: DatasetName | None = None  # external evaluation: the SVM also learns on all of this dataset of the study
    split: StrictStr = Field("", validate_default=True)  # default: 5x2, or external (with `train`)
    folds: tuple[StrictStr, ...] | None = None  # None: every fold of the split
    protocols: tuple[StrictStr, ...] = Field((), validate_default=True)
    frozen: tuple[Features, ...] = ()  # features of backbones as they are (no FT)
    finetuned: tuple[FineTuned, ...] = ()  # backbones fine-tuned per fold (FT)
    reference: Path | None = Field(None, validate_default=True)  # fold files for split = "reference"

    @field_validator("split")
    @classmethod
    def _known_split(cls, split: str, info: ValidationInfo) -> str:
        from protocols.splits import SPLITS

        external = info.data.get("train") is not None
        allowed = (*SPLITS, EXTERNAL) if external else SPLITS
        split = split or (EXTERNAL if external else "5x2")
        if split not in allowed:
            raise ValueError(f"unknown split {split!r}; available: {', '.join(allowed)}")
        return split

    @field_validator("folds")
    @classmethod
    def _some_folds(cls, folds: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return folds or None

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, protocols: tuple[str, ...]) -> tuple[str, ...]:
        from protocols.designs import DESIGNS

        if not protocols:
            raise ValueError(f"missing: list protocols from {', '.join(DESIGNS)}")
        unknown = [p for p in protocols if p not in DESIGNS]
        if unknown:
            raise ValueError(f"unknown protocol {unknown[0]!r}; available: {', '.join(DESIGNS)}")
        return protocols

    @field_validator("finetuned")
    @classmethod
    def _frozen_only_when_external(cls, finetuned: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if finetuned and info.data.get("train") is not None:
            raise ValueError("an external evaluation (`train`) scores frozen features only")
        return finetuned

    @field_validator("reference")
    @classmethod
    def _reference_folds(cls, reference: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("split") == "reference" and not reference:
            raise ValueError("split = 'reference' needs the folder of the paper's fold files")
        return reference or None

    @model_validator(mode="after")
    def _evaluates_something(self) -> EvaluationSpec:
        if not self.frozen and not self.finetuned:
            raise ValueError("evaluates no backbone: list some under `frozen` and/or `finetuned`")
        return self


class ExternalPair(Table):
    """A [confirm] external pair: the SVM learns on all of `train` and is scored on all of `dataset`."""

    train: DatasetName = Field(description="name the dataset of this study the SVM learns on")
    dataset: DatasetName = Field(description="name the dataset of this study it scores")


class ConfirmTable(Table):
    """[confirm]: data the development candidates were not chosen on (what it confirms: `plan.confirmations`)."""

    seeds: tuple[Annotated[StrictInt, Field(ge=0)], ...] = ()  # fresh 5x2 partitions of the 5x2 evaluations
    external: tuple[ExternalPair, ...] = ()

    @model_validator(mode="after")
    def _names_data(self) -> ConfirmTable:
        if not self.seeds and not self.external:
            raise ValueError("names no confirmation data: give seeds = [1] and/or external pairs")
        return self


class StudyFile(Table):
    """The whole file: its top-level keys, then one field per table."""

    description: StrictStr = ""
    recipe: Annotated[StrictStr, AfterValidator(lambda name: _bench_error(get_recipe, name) and name)] = Field(
        description="name the training recipe (see `bench recipes`)")
    seed: Annotated[StrictInt, Field(ge=0)] = 0  # seeds the splits and every training run
    bootstrap_draws: Annotated[StrictInt, AfterValidator(_enough_draws)] = TEST_DRAWS
    overrides: dict[str, Any] = {}  # recipe fields changed for this study (checked by the recipe)
    from_scratch: dict[str, Any] | None = None  # recipe fields changed again for runs from random weights
    datasets: dict[Annotated[str, _name("dataset")], DatasetTable] = {}
    sources: dict[Annotated[str, AfterValidator(_source_backbone)], DatasetName] = {}
    backbones: dict[Annotated[str, _name("backbone"), AfterValidator(_new_backbone)], BackboneTable] = {}
    transfer: dict[Literal[TRANSFER_COLUMNS], Features] = {}
    architectures: tuple[Features, ...] = ()
    evaluate: tuple[EvaluationSpec, ...] = Field((), validate_default=True)
    baseline: Features | None = None
    confirm: ConfirmTable | None = None

    @field_validator("evaluate")
    @classmethod
    def _evaluates_something(cls, evaluate: tuple[EvaluationSpec, ...]) -> tuple[EvaluationSpec, ...]:
        if not evaluate:
            raise ValueError("the study evaluates nothing: add an [[evaluate]] table")
        return evaluate


# --- finding and reading study files --------------------------------------------------------------------------

def builtin_studies() -> dict[str, Path]:
    """The studies shipped in `bench/studies/`, by name."""
    folder = files("bench").joinpath("studies")
    return {Path(p.name).stem: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: Path(p.name).stem)
            if p.name.endswith(".toml")}


def find_study(spec: str) -> Path:
    """A study file path, or the name of a built-in study."""
    if spec.endswith(".toml") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise BenchError(f"study file not found: {spec}")
        return Path(spec)
    studies = builtin_studies()
    if spec not in studies:
        raise BenchError(f"no study file {spec!r} and no built-in study of that name; built-in: "
                         f"{', '.join(studies)} (see `bench studies`)")
    return studies[spec]


def load_study(spec: str | Path, roots: dict[str, Path] | None = None) -> Study:
    """Read and check a study file; `roots` (dataset name -> folder) override the roots it gives."""
    path = find_study(str(spec))
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"{path}: not a readable TOML study file: {exc}") from exc
    check_name("study name (the file's stem)", path.stem, f"{path}: ")  # names its --out folder
    context = {"datasets": _keys(raw, "datasets"), "backbones": {*plugins.backbones(), *_keys(raw, "backbones")}}
    table = validate(StudyFile, raw, str(path), context)
    roots = roots or {}
    datasets = _datasets(path, table, roots)
    _check_sources_needed(path, table)
    if table.confirm and table.seed in table.confirm.seeds:
        raise _fail(path, "confirm.seeds", f"seed {table.seed} draws the development partitions; confirm on others, "
                    f"e.g. [{table.seed + 1}]")
    limited = sorted(n for n in {e.dataset for e in table.evaluate} if datasets[n].limit)
    if limited:
        raise _fail(path, f"datasets.{limited[0]}.limit", "a target dataset is evaluated whole; `limit` is for "
                    "source datasets (the first N rows their source stage trains on)")
    recipe = _overridden(path, get_recipe(table.recipe), table.overrides, "overrides")
    scratch = None if table.from_scratch is None else _overridden(path, recipe, table.from_scratch, "from_scratch")
    return Study(
        name=path.stem, path=path, description=table.description, recipe=recipe, seed=table.seed,
        datasets=datasets, sources=dict(table.sources), backbones=_backbones(path, table),
        transfer=dict(table.transfer), architectures=table.architectures, evaluations=table.evaluate,
        baseline=table.baseline, bootstrap_draws=table.bootstrap_draws, confirm=table.confirm,
        scratch_recipe=scratch,
    )


# --- what the tables cannot check alone: one table against another, the command line, the disk -------------------

def _fail(path: Path, key: str, message: str) -> BenchError:
    return BenchError(f"{path}: {key}: {message}")


def _keys(raw: dict, table: str) -> list[str]:
    """The names a table of the raw file defines (none where it is no table: validation says so)."""
    value = raw.get(table)
    return list(value) if isinstance(value, dict) else []


def _overridden(path: Path, recipe: Recipe, overrides: dict[str, Any], key: str) -> Recipe:
    """`recipe` with the fields of the study's table `key` changed."""
    allowed = [f.name for f in fields(Recipe) if f.name not in ("name", "description")]
    unknown = [field for field in overrides if field not in allowed]
    if unknown:
        raise _fail(path, f"{key}.{unknown[0]}", unknown_key(unknown[0], allowed))
    try:
        return recipe.with_overrides(**overrides)
    except BenchError as exc:
        raise _fail(path, key, str(exc)) from None


def _datasets(path: Path, table: StudyFile, roots: dict[str, Path]) -> dict[str, DatasetRef]:
    adapters = [d.adapter for d in table.datasets.values()]
    if len(set(adapters)) < len(adapters):
        # the store and the fine-tuned checkpoints are keyed by adapter name, so two would overwrite each other
        raise _fail(path, "datasets", "two datasets use the same adapter; a study can hold each adapter once")
    unknown_roots = sorted(set(roots) - set(table.datasets))
    if unknown_roots:
        raise _fail(path, "--root", f"no dataset(s) {unknown_roots} in this study; it has {', '.join(table.datasets)}")
    return {name: _dataset(path, name, dataset, roots.get(name)) for name, dataset in table.datasets.items()}


def _dataset(path: Path, name: str, dataset: DatasetTable, root_given: Path | None) -> DatasetRef:
    root = root_given or dataset.root or None
    if plugins.get_dataset(dataset.adapter).needs_root and not root:
        raise _fail(path, f"datasets.{name}.root", f"not set: the {dataset.adapter} adapter needs the folder holding "
                    f"its files. Fill it in (copy the study with `bench studies {path.stem} > my-study.toml`) "
                    f"or pass --root {name}=PATH")
    if root and not Path(root).is_dir():
        raise _fail(path, f"datasets.{name}.root", f"{root} is not a folder (relative roots are read from "
                    f"{Path.cwd()})")
    return DatasetRef(name, dataset.adapter, {k: str(v) for k, v in dataset.options.items()}, dataset.limit,
                      Path(root) if root else None)


def _backbones(path: Path, table: StudyFile) -> dict[str, BackboneSpec]:
    """The study's own backbones, in definition order: each `like` is installed or defined above."""
    installed, defined = plugins.backbones(), {}
    for name, backbone in table.backbones.items():
        try:
            library = _library_model(backbone.like)
        except ValueError as exc:
            raise _fail(path, f"backbones.{name}.like", str(exc)) from None
        if backbone.like not in installed and backbone.like not in defined and not library:
            raise _fail(path, f"backbones.{name}.like", f"unknown backbone {backbone.like!r}: name an installed one "
                        "(see `bench backbones`) or one defined above in this file")
        defined[name] = BackboneSpec(name, backbone.like, backbone.weights == "random", backbone.source)
    return defined


def _check_sources_needed(path: Path, table: StudyFile) -> None:
    """A backbone whose weights come from a source task cannot run before the study trains it."""
    backbones = plugins.backbones()
    for i, evaluation in enumerate(table.evaluate):
        for name in (m.partition("@")[0] for spec in (*evaluation.frozen, *evaluation.finetuned)
                     for m in stored_backbones(spec)):
            if name in backbones and backbones[name].source_stages and name not in table.sources:
                stage = backbones[name].source_stages[0]
                raise _fail(path, f"evaluate[{i}]", f"backbone {name!r} is first trained on {stage.task} "
                            f"({stage.dataset}): name the study's dataset for it under [sources], e.g. "
                            f"{name} = \"{stage.dataset}\"")


def stored_backbones(spec: str) -> list[str]:
    """The backbones whose feature sets evaluated features such as `A+B [tta dihedral]` read: [A, B]."""
    return members(parse(str(spec))[0])
