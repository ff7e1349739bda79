"""Study files: a whole benchmark (datasets, source training, fine-tunes, extractions, evaluations) in one small
TOML file, checked with errors that name the file and the key (`bench.study.plan` expands it to stages).

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

A training run that starts from random weights trains every layer, whatever the recipe's `train_last` says:
freezing random layers would not be training from scratch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from bench import plugins
from bench.errors import BenchError
from bench.evaluate.features import members, parse
from bench.paths import check_name
from bench.train.recipes import Recipe, get_recipe
from bench.work import EXTERNAL, DatasetRef
from protocols.stats import TEST_DRAWS

TRANSFER_COLUMNS = ("none", "retino", "imagenet", "double")
TOP_KEYS = {"description", "recipe", "seed", "overrides", "from_scratch", "architectures", "datasets", "sources",
            "backbones", "transfer", "evaluate", "baseline", "bootstrap_draws"}
DATASET_KEYS = {"adapter", "root", "options", "limit"}
BACKBONE_KEYS = {"like", "weights", "source"}
EVALUATE_KEYS = {"dataset", "split", "folds", "protocols", "frozen", "finetuned", "reference", "train"}


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone the study defines: `like`'s architecture and preprocessing, with `like`'s initial weights or
    (random) the architecture's own initialisation, optionally trained on dataset `source` first."""

    name: str
    like: str
    random: bool
    source: str | None  # the name of one of the study's datasets


@dataclass(frozen=True)
class EvaluationSpec:
    """An [[evaluate]] table: a target dataset (a name of the study's), its split and what is evaluated there."""

    dataset: str
    split: str
    folds: tuple[str, ...] | None  # None: every fold of the split
    protocols: tuple[str, ...]
    frozen: tuple[str, ...]
    finetuned: tuple[str, ...]
    reference: Path | None  # fold files for split = "reference"
    train: str | None = None  # external evaluation: the SVM also learns on all of this dataset of the study


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
    return _Reader(path, roots or {}).study(raw)


class _Reader:
    """Turns the parsed TOML into a Study; every error names the file and the key."""

    def __init__(self, path: Path, roots: dict[str, Path]):
        self.path = path
        self.roots = roots

    def fail(self, key: str, message: str) -> BenchError:
        return BenchError(f"{self.path}: {key}: {message}")

    def study(self, raw: dict) -> Study:
        self.check_keys(raw, TOP_KEYS, "top level")
        check_name("study name (the file's stem)", self.path.stem, f"{self.path}: ")  # names its --out folder
        recipe = self.recipe(raw)
        datasets = {name: self.dataset(name, value) for name, value in self.table(raw, "datasets").items()}
        adapters = [d.adapter for d in datasets.values()]
        if len(set(adapters)) < len(adapters):
            # the store and the fine-tuned checkpoints are keyed by adapter name, so two would overwrite each other
            raise self.fail("datasets", "two datasets use the same adapter; a study can hold each adapter once")
        unknown_roots = sorted(set(self.roots) - set(datasets))
        if unknown_roots:
            raise self.fail("--root", f"no dataset(s) {unknown_roots} in this study; it has {', '.join(datasets)}")
        sources = {name: self.source(name, value, datasets) for name, value in self.table(raw, "sources").items()}
        backbones: dict[str, BackboneSpec] = {}
        for name, value in self.table(raw, "backbones").items():
            backbones[name] = self.defined_backbone(name, value, datasets, backbones)
        known = set(plugins.backbones()) | set(backbones)
        evaluations = tuple(self.evaluation(i, value, datasets, known)
                            for i, value in enumerate(self.array(raw, "evaluate")))
        if not evaluations:
            raise self.fail("evaluate", "the study evaluates nothing: add an [[evaluate]] table")
        self.check_sources_needed(evaluations, sources)
        targets = {e.dataset for e in evaluations}
        limited = sorted(n for n in targets if datasets[n].limit)
        if limited:
            raise self.fail(f"datasets.{limited[0]}.limit", "a target dataset is evaluated whole; `limit` is for "
                            "source datasets (the first N rows their source stage trains on)")
        transfer = self.table(raw, "transfer")
        self.check_keys(transfer, set(TRANSFER_COLUMNS), "transfer")
        for column, backbone in transfer.items():
            self.backbone(f"transfer.{column}", backbone, known)
        architectures = tuple(self.backbone("architectures", b, known) for b in self.strings(raw, "architectures"))
        baseline = self.backbone("baseline", raw["baseline"], known) if "baseline" in raw else None
        return Study(
            name=self.path.stem, path=self.path, description=str(raw.get("description", "")), recipe=recipe,
            seed=self.integer(raw, "seed", 0), datasets=datasets, sources=sources, backbones=backbones,
            transfer=dict(transfer),
            architectures=architectures, evaluations=evaluations, baseline=baseline,
            bootstrap_draws=self.draws(raw),
            scratch_recipe=self.overridden(recipe, raw, "from_scratch") if "from_scratch" in raw else None,
        )

    # --- sections

    def recipe(self, raw: dict) -> Recipe:
        if "recipe" not in raw:
            raise self.fail("recipe", "missing: name the training recipe (see `bench recipes`)")
        try:
            recipe = get_recipe(str(raw["recipe"]))
        except BenchError as exc:
            raise self.fail("recipe", str(exc)) from None
        return self.overridden(recipe, raw, "overrides")

    def overridden(self, recipe: Recipe, raw: dict, key: str) -> Recipe:
        """`recipe` with the fields table `key` changes."""
        overrides = self.table(raw, key)
        allowed = {f.name for f in fields(Recipe)} - {"name", "description"}
        self.check_keys(overrides, allowed, key)
        try:
            return recipe.with_overrides(**overrides)
        except BenchError as exc:
            raise self.fail(key, str(exc)) from None

    def dataset(self, name: str, value: Any) -> DatasetRef:
        key = f"datasets.{name}"
        check_name("dataset", name, f"{self.path}: datasets: ")
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table with adapter, root, options, limit")
        self.check_keys(value, DATASET_KEYS, key)
        adapter_name = value.get("adapter")
        if not isinstance(adapter_name, str):
            raise self.fail(f"{key}.adapter", "missing: name a dataset adapter (see `bench datasets`)")
        try:
            adapter = plugins.get_dataset(adapter_name)
        except BenchError as exc:
            raise self.fail(f"{key}.adapter", str(exc)) from None
        root = self.roots.get(name) or value.get("root") or None
        if adapter.needs_root and not root:
            raise self.fail(f"{key}.root", f"not set: the {adapter_name} adapter needs the folder holding its files. "
                            f"Fill it in (copy the study with `bench studies {self.path.stem} > my-study.toml`) "
                            f"or pass --root {name}=PATH")
        if root and not Path(root).is_dir():
            raise self.fail(f"{key}.root", f"{root} is not a folder (relative roots are read from {Path.cwd()})")
        options = value.get("options", {})
        if not isinstance(options, dict):
            raise self.fail(f"{key}.options", "must be a table of adapter options, e.g. { n = 240 }")
        limit = value.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise self.fail(f"{key}.limit", "must be a positive whole number of manifest rows")
        return DatasetRef(name, adapter_name, {k: str(v) for k, v in options.items()}, limit,
                          Path(root) if root else None)

    def source(self, name: str, value: Any, datasets: dict[str, DatasetRef]) -> str:
        backbones = plugins.backbones()
        if name not in backbones or not backbones[name].source_stages:
            having = [b.name for b in backbones.values() if b.source_stages]
            raise self.fail(f"sources.{name}", f"{name!r} is no installed backbone with a source stage (those are: "
                            f"{', '.join(having) or 'none'}); define new ones under [backbones]")
        return self.dataset_ref(f"sources.{name}", value, datasets)

    def defined_backbone(self, name: str, value: Any, datasets: dict[str, DatasetRef],
                         defined: dict[str, BackboneSpec]) -> BackboneSpec:
        key = f"backbones.{name}"
        check_name("backbone", name, f"{self.path}: backbones: ")  # its checkpoints are files named after it
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table with like (and weights, source)")
        self.check_keys(value, BACKBONE_KEYS, key)
        installed = plugins.backbones()
        if name in installed:
            raise self.fail(key, f"an installed backbone is called {name!r}; name the study's own differently")
        like = value.get("like")
        if like not in installed and like not in defined:
            raise self.fail(f"{key}.like", f"unknown backbone {like!r}: name an installed one (see `bench "
                            "backbones`) or one defined above in this file")
        weights = value.get("weights", "initial")
        if weights not in ("initial", "random"):
            raise self.fail(f"{key}.weights", f"{weights!r}: use \"initial\" ({like}'s weights) or \"random\"")
        source = value.get("source")
        if source is not None:
            self.dataset_ref(f"{key}.source", source, datasets)
            if weights == "random":
                raise self.fail(key, "a source stage starts from `like`'s weights: to train from random weights, "
                                "define the random backbone first and name it as `like`")
        return BackboneSpec(name, like, weights == "random", source)

    def evaluation(self, index: int, value: Any, datasets: dict[str, DatasetRef], known: set[str]) -> EvaluationSpec:
        from protocols.designs import DESIGNS
        from protocols.splits import SPLITS

        key = f"evaluate[{index}]"
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        self.check_keys(value, EVALUATE_KEYS, key)
        dataset = self.dataset_ref(f"{key}.dataset", value.get("dataset"), datasets)
        train = self.dataset_ref(f"{key}.train", value["train"], datasets) if "train" in value else None
        split = value.get("split", EXTERNAL if train else "5x2")
        allowed = (*SPLITS, EXTERNAL) if train else SPLITS
        if split not in allowed:
            raise self.fail(f"{key}.split", f"unknown split {split!r}; available: {', '.join(allowed)}")
        protocols = self.strings(value, "protocols", key)
        if not protocols:
            raise self.fail(f"{key}.protocols", f"missing: list protocols from {', '.join(DESIGNS)}")
        for protocol in protocols:
            if protocol not in DESIGNS:
                raise self.fail(f"{key}.protocols", f"unknown protocol {protocol!r}; available: {', '.join(DESIGNS)}")
        frozen = tuple(self.backbone(f"{key}.frozen", b, known) for b in self.strings(value, "frozen", key))
        finetuned = tuple(self.backbone(f"{key}.finetuned", b, known, plain=True)
                          for b in self.strings(value, "finetuned", key))
        if not frozen and not finetuned:
            raise self.fail(key, "evaluates no backbone: list some under `frozen` and/or `finetuned`")
        if train and finetuned:
            raise self.fail(f"{key}.finetuned", "an external evaluation (`train`) scores frozen features only")
        folds = tuple(self.strings(value, "folds", key)) or None
        reference = value.get("reference")
        if split == "reference" and not reference:
            raise self.fail(f"{key}.reference", "split = 'reference' needs the folder of the paper's fold files")
        return EvaluationSpec(dataset, split, folds, tuple(protocols), frozen, finetuned,
                              Path(reference) if reference else None, train)

    def check_sources_needed(self, evaluations: tuple[EvaluationSpec, ...], sources: dict[str, str]) -> None:
        """A backbone whose weights come from a source task cannot run before the study trains it."""
        backbones = plugins.backbones()
        for i, evaluation in enumerate(evaluations):
            for name in (m.partition("@")[0] for spec in (*evaluation.frozen, *evaluation.finetuned)
                         for m in stored_backbones(spec)):
                if name in backbones and backbones[name].source_stages and name not in sources:
                    stage = backbones[name].source_stages[0]
                    raise self.fail(f"evaluate[{i}]", f"backbone {name!r} is first trained on {stage.task} "
                                    f"({stage.dataset}): name the study's dataset for it under [sources], e.g. "
                                    f"{name} = \"{stage.dataset}\"")

    # --- values

    def dataset_ref(self, key: str, value: Any, datasets: dict[str, DatasetRef]) -> str:
        if value not in datasets:
            raise self.fail(key, f"{value!r} is not a dataset of this study; it has {', '.join(datasets) or 'none'}")
        return value

    def backbone(self, key: str, value: Any, known: set[str], plain: bool = False) -> str:
        """A backbone, or (unless `plain`) evaluated features such as `A@448+B [tta dihedral, power]`."""
        try:
            names = stored_backbones(value)
        except BenchError as exc:
            raise self.fail(key, str(exc)) from None
        unknown = [n for n in names if n.partition("@")[0] not in known]
        if unknown or (plain and value != names[0]):
            what = "unknown backbone" if unknown else "a fine-tuned backbone is one backbone, no fusion or TTA:"
            raise self.fail(key, f"{what} {(unknown or [value])[0]!r}; available: {', '.join(sorted(known))} "
                            "(see `bench backbones`; a study defines its own under [backbones])")
        return value

    def table(self, raw: dict, key: str) -> dict:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def array(self, raw: dict, key: str) -> list:
        value = raw.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def strings(self, raw: dict, key: str, where: str = "") -> list[str]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}" if where else key, "must be a list of names")
        return value

    def draws(self, raw: dict) -> int:
        draws = self.integer(raw, "bootstrap_draws", TEST_DRAWS)
        if draws < 100:
            raise self.fail("bootstrap_draws", f"{draws} draws cannot show a p-value below {2 / max(draws, 1):.2g}; "
                            f"use at least 100 (default {TEST_DRAWS})")
        return draws

    def integer(self, raw: dict, key: str, default: int) -> int:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(key, "must be a whole number >= 0")
        return value

    def check_keys(self, table: dict, allowed: set[str], where: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(where, f"unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def stored_backbones(spec: str) -> list[str]:
    """The backbones whose feature sets evaluated features such as `A+B [tta dihedral]` read: [A, B]."""
    return members(parse(str(spec))[0])
