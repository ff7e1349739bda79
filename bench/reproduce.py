"""`bench reproduce`: run a study's stages in dependency order, skipping every stage already done.

Each stage has a fingerprint: a hash of its parameters, of the content identity of the datasets it reads and of
what its upstream stages produced (their digests: checkpoint hashes, model hashes, result rows). The ledger
(`DIR/ledger.json`, rewritten atomically after every stage) keeps each finished stage's fingerprint and digest; a
stage whose fingerprint is unchanged and whose output is still there is skipped. So an interrupted study resumes
where it stopped, an unchanged one finishes at once, and a changed setting reruns only the stages it reaches.
`DIR/log.jsonl` records what each run did, one JSON object per event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bench import paths, plugins
from bench.backbone import Backbone
from bench.errors import BenchError
from bench.features import label
from bench.hookspecs import hookimpl
from bench.recipes import Recipe
from bench.study import Stage, Study, defined_backbones, plan
from bench.tta import key as tta_key

KINDS = ("source", "finetune", "extract", "evaluate", "report")
KIND_TITLES = {"source": "source training", "finetune": "fine-tuning", "extract": "export + extraction",
               "evaluate": "evaluation", "report": "leaderboard + report"}


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


class Ledger:
    """Finished stages: key -> {fingerprint, digest, seconds, finished}. Rewritten atomically after each stage."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.stages = json.loads(path.read_text())["stages"]
            except (ValueError, KeyError, TypeError) as exc:
                raise BenchError(f"{path} is not a study ledger ({exc}); delete it to rerun every stage") from exc

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.stages.get(key)

    def digest(self, key: str) -> str | None:
        entry = self.stages.get(key)
        return entry["digest"] if entry else None

    def record(self, key: str, fingerprint: str, digest: str, seconds: float) -> None:
        self.stages[key] = {"fingerprint": fingerprint, "digest": digest, "seconds": round(seconds, 2),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=1, sort_keys=True))
        tmp.replace(self.path)  # a kill mid-write leaves the previous ledger, never a torn one


@dataclass(frozen=True)
class Action:
    """What a stage kind does: `run` makes the output, `keep` turns what `run` returned into the stage's digest,
    `present` says the output still exists. `run` may run in another process (`--executor ray`); `keep` runs in
    the study's own process, so files that several stages add to (the results tables) have a single writer."""

    run: Callable[[Stage], Any]
    present: Callable[[Stage], bool]
    keep: Callable[[Stage, Any], str] = lambda stage, digest: digest


@dataclass(frozen=True)
class Finished:
    """A stage an executor ran: what its `run` returned, or the error it raised."""

    stage: Stage
    fingerprint: str
    value: Any = None
    seconds: float = 0.0
    error: Exception | None = None


class InProcess:
    """The local executor: each stage runs in this process, one at a time, in the order they are submitted.

    An executor (this one, or bench.cluster.RayStages) takes `submit`ted stages, has `running` of them at once
    (and takes no more while `full`), and hands each back from `next_finished` when it is done."""

    def __init__(self) -> None:
        self.pending: tuple[Stage, str, Callable[[Stage], Any]] | None = None

    @property
    def running(self) -> int:
        return int(self.pending is not None)

    @property
    def full(self) -> bool:
        return self.pending is not None

    def submit(self, stage: Stage, fingerprint: str, run: Callable[[Stage], Any]) -> None:
        self.pending = (stage, fingerprint, run)

    def next_finished(self) -> Finished:
        (stage, print_, run), self.pending = self.pending, None
        started = time.monotonic()
        try:
            value = run(stage)
        except Exception as exc:
            return Finished(stage, print_, error=exc)
        return Finished(stage, print_, value, time.monotonic() - started)


def fingerprint(stage: Stage, ledger: Ledger, identity: dict[str, Any]) -> str:
    """Hash of everything the stage's output depends on."""
    missing = [d for d in stage.deps if ledger.digest(d) is None]
    if missing:
        raise BenchError(f"stage {stage.key!r} runs before its input(s) {missing}: the stage graph is out of order")
    payload = {"kind": stage.kind, "params": stage.params, "identity": identity,
               "deps": {d: ledger.digest(d) for d in stage.deps}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def execute(stages: list[Stage], ledger: Ledger, actions: dict[str, Action], identity: Callable[[Stage], dict],
            log: Path, console: Console, executor: InProcess | None = None) -> Counter:
    """Run `stages` (in dependency order), skipping the ones already done; returns counts of ran / skipped.

    A stage is submitted to the executor (default: this process, one stage at a time) as soon as the stages it
    depends on are done or skipped. After a failure nothing new starts, the running stages finish and are
    recorded, then the first error is raised."""
    executor = executor or InProcess()
    view = StudyView(stages, ledger)
    counts: Counter = Counter()
    planned, settled, waiting, failure = {s.key for s in stages}, set(), list(stages), None
    _log(log, event="run", pid=os.getpid(), stages=len(stages))
    with Live(view, console=console, refresh_per_second=2, transient=False):
        while executor.running or (waiting and failure is None):
            ready = None if executor.full or failure else next(
                (s for s in waiting if all(d in settled or d not in planned for d in s.deps)), None)
            if ready is None:
                done = executor.next_finished()
                if done.error is not None:
                    _log(log, event="fail", stage=done.stage.key, error=str(done.error))
                    failure = failure or done.error
                    continue
                ledger.record(done.stage.key, done.fingerprint, actions[done.stage.kind].keep(done.stage, done.value),
                              done.seconds)
                _log(log, event="done", stage=done.stage.key, seconds=round(done.seconds, 2))
                view.finish(done.stage, done.seconds)
                console.print(f"[green]done[/green] {done.stage.key} [dim]({_clock(done.seconds)})[/dim]",
                              highlight=False)
                counts["ran"] += 1
                settled.add(done.stage.key)
                continue
            waiting.remove(ready)
            action = actions[ready.kind]
            print_ = fingerprint(ready, ledger, identity(ready))
            entry = ledger.entry(ready.key)
            if entry and entry["fingerprint"] == print_ and action.present(ready):
                view.finish(ready, None)
                counts["skipped"] += 1
                _log(log, event="skip", stage=ready.key)
                settled.add(ready.key)
                continue
            view.start(ready)
            _log(log, event="start", stage=ready.key)
            executor.submit(ready, print_, action.run)
    if failure is not None:
        raise failure
    if not console.is_terminal:
        console.line()  # a terminal gets its line from Live; a log file would run on into the next line
    _log(log, event="end", **counts)
    return counts


def _log(path: Path, **event: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")


def ran_stages(log: Path) -> list[list[str]]:
    """Per run recorded in `log`, the keys of the stages it started (for tests and for users asking why)."""
    runs: list[list[str]] = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "run":
            runs.append([])
        elif event["event"] == "start":
            runs[-1].append(event["stage"])
    return runs


class StudyView:
    """The live view: per kind of stage how many are done / running / left, and an estimate of the time left."""

    def __init__(self, stages: list[Stage], ledger: Ledger):
        self.left = Counter(s.kind for s in stages)
        self.done: Counter = Counter()
        self.skipped: Counter = Counter()
        self.pending = {s.key: s for s in stages}
        self.ledger = ledger
        self.durations: dict[str, list[float]] = {}
        self.running: dict[str, tuple[Stage, float]] = {}  # key -> stage, when it started (several on Ray)
        self.run_started = time.monotonic()

    def start(self, stage: Stage) -> None:
        self.running[stage.key] = (stage, time.monotonic())

    def finish(self, stage: Stage, seconds: float | None) -> None:
        """`seconds` is None for a skipped stage."""
        self.running.pop(stage.key, None)
        self.left[stage.kind] -= 1
        self.pending.pop(stage.key)
        if seconds is None:
            self.skipped[stage.kind] += 1
        else:
            self.done[stage.kind] += 1
            self.durations.setdefault(stage.kind, []).append(seconds)

    def estimate(self, stage: Stage) -> float | None:
        """This stage's last duration, else the mean of its kind in this run, else in the ledger; None: unknown."""
        entry = self.ledger.entry(stage.key)
        if entry:
            return entry["seconds"]
        here = self.durations.get(stage.kind)
        if here:
            return sum(here) / len(here)
        before = [e["seconds"] for k, e in self.ledger.stages.items() if k.split(" ")[0] == stage.kind]
        return sum(before) / len(before) if before else None

    def time_left(self) -> str:
        estimates = [self.estimate(s) for s in self.pending.values()]
        known = sum(e for e in estimates if e is not None)
        for stage, started in self.running.values():
            known -= min(time.monotonic() - started, self.estimate(stage) or 0)
        unknown = sorted({s.kind for s, e in zip(self.pending.values(), estimates) if e is None})
        if unknown:
            kinds = ", ".join(KIND_TITLES[k] for k in unknown)
            return f"at least {_clock(max(known, 0))} left (no timing yet for {kinds})"
        return f"about {_clock(max(known, 0))} left"

    def __rich__(self) -> Group:
        table = Table(box=None, pad_edge=False)
        for column in ("stage", "done", "skipped (unchanged)", "left"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for kind in KINDS:
            total = self.done[kind] + self.skipped[kind] + self.left[kind]
            if total:
                table.add_row(KIND_TITLES[kind], str(self.done[kind]), str(self.skipped[kind]), str(self.left[kind]))
        lines = [table]
        for stage, started in self.running.values():
            lines.append(Text(f"running: {stage.key} ({_clock(time.monotonic() - started)})", "bold"))
        lines.append(Text(f"elapsed {_clock(time.monotonic() - self.run_started)}, {self.time_left()}", "dim"))
        return Group(*lines)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


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


# --- running a study ------------------------------------------------------------------------------------------

def reproduce(study: Study, out: Path, console: Console, executor: str = "local",
              address: str | None = None) -> Counter:
    """Run every stage of `study` not already done in `out` (the report: `Workspace(out).report`); returns how
    many stages ran and how many were skipped. `executor` "ray" runs the stages as Ray tasks on the cluster at
    `address` (default: $RAY_ADDRESS, else a Ray instance started here)."""
    ws = Workspace(Path(out).resolve())
    ws.out.mkdir(parents=True, exist_ok=True)
    user_home = paths.home()
    with bench_home(ws.home), study_backbones(study):
        _share_caches(user_home, ws.home, study)
        data = StudyData.load(study)
        stages = plan(study, data.fold_keys)
        ledger = Ledger(ws.ledger)
        runner = InProcess()
        if executor == "ray":
            from bench.cluster import RayStages

            runner = RayStages(ws.home, study, address)
        counts = execute(stages, ledger, actions(study, ws, data), data.identity, ws.log, console, runner)
    console.print(f"{counts['ran']} stage(s) run, {counts['skipped']} unchanged and skipped", highlight=False)
    return counts


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

        dataset = stage.params.get("dataset", {}).get("name")
        identity = {"bench": bench.__version__, "data": self.fingerprints.get(dataset)}
        if stage.kind in ("source", "finetune", "extract"):  # the stages that load initial weights
            identity["imported_weights"] = self.imported
        return identity


def actions(study: Study, ws: Workspace, data: StudyData) -> dict[str, Action]:
    """The real stage functions: training, extraction and evaluation of the other parts of bench."""
    from bench import report

    return {
        "source": Action(run=lambda s: _train_source(study, s), present=lambda s: _source_file(s).is_file()),
        "finetune": Action(run=lambda s: _finetune(study, s), present=lambda s: _checkpoint(s).is_file()),
        "extract": Action(run=lambda s: _extract(study, ws, s), present=_StoreSnapshot(ws.store).has),
        "evaluate": Action(run=lambda s: _evaluate(study, ws, s), present=lambda s: _has_results(ws, s),
                           keep=lambda s, done: _keep_evaluation(ws, done)),
        "report": Action(run=lambda s: report.write(study, ws, data), present=lambda s: ws.report.is_file()),
    }


def _source_file(stage: Stage) -> Path:
    return paths.weights_dir() / plugins.get_backbone(stage.params["backbone"]).source_stages[0].output


def _train_source(study: Study, stage: Stage) -> str:
    from bench.export import file_sha256
    from bench.stages import source_stage_job
    from bench.train import fit

    p = stage.params
    spec = study.datasets[p["dataset"]["name"]]
    backbone = plugins.get_backbone(p["backbone"])
    # the backbone's own stage (start, output), run on the study's dataset: e.g. retino on synthetic-fundus
    trained = dataclasses.replace(backbone, source_stages=(
        dataclasses.replace(backbone.source_stages[0], dataset=spec.adapter),))
    job = source_stage_job(trained, spec.adapter, spec.root, Recipe(**p["recipe"]), options=spec.options,
                           limit=spec.limit, seed=study.seed)
    fit(job)
    return file_sha256(job.out)


def _checkpoint(stage: Stage) -> Path:
    p = stage.params
    return paths.finetuned_checkpoint(p["dataset"]["adapter"], p["backbone"], p["protocol"], p["fold"])


def _finetune(study: Study, stage: Stage) -> str:
    from bench.export import file_sha256
    from bench.stages import finetune_job
    from bench.train import fit

    p = stage.params
    spec = study.datasets[p["dataset"]["name"]]
    job = finetune_job(plugins.get_backbone(p["backbone"]), spec.adapter, spec.root, Recipe(**p["recipe"]),
                       protocol=p["protocol"], fold=p["fold"], split=p["split"],
                       reference_dir=Path(p["reference"]) if p["reference"] else None, options=spec.options,
                       seed=study.seed)
    fit(job)
    return file_sha256(job.out)


def _extract(study: Study, ws: Workspace, stage: Stage) -> str:
    from bench.extract import prepare
    from featurestore import StoreError

    p = stage.params
    spec = study.datasets[p["dataset"]["name"]]
    arguments = dict(store=ws.store, protocol=p["protocol"], fold=p["fold"], options=spec.options, tta=p.get("tta"))
    try:  # a set this study began with the same model resumes where it stopped
        job = prepare(p["backbone"], spec.adapter, spec.root, **arguments)
    except StoreError:  # one the study made from an earlier model (a changed setting upstream) is replaced
        job = prepare(p["backbone"], spec.adapter, spec.root, overwrite=True, **arguments)
    job.run()
    return job.model.sha256


class _StoreSnapshot:
    """Which complete feature sets the store held when the run began (listing it once keeps a rerun instant)."""

    def __init__(self, store: Path):
        self.store = store
        self.sets: set[tuple[str, str, str]] | None = None

    def has(self, stage: Stage) -> bool:
        from featurestore import FeatureStore

        if self.sets is None:
            self.sets = {(i.dataset, i.backbone, i.key) for i in FeatureStore(self.store).list() if i.complete}
        p = stage.params
        key = tta_key(paths.feature_key(p["protocol"], p["fold"]), p.get("tta"))
        return (p["dataset"]["adapter"], p["backbone"], key) in self.sets


def _evaluation_rows(table: Any, stage: Stage) -> Any:
    p = stage.params
    return table[(table["dataset"] == p["dataset"]["adapter"]) & (table["protocol"] == p["protocol"])
                 & (table["backbone"] == label(p["backbone"], p.get("tta"), p.get("power", False)))
                 & (table["finetuned"] == p["finetuned"])
                 & (table["split"] == p["split"])]


def _has_results(ws: Workspace, stage: Stage) -> bool:
    from bench.leaderboard import read_table

    if not (ws.results.is_file() and ws.predictions.is_file()):
        return False
    return set(_evaluation_rows(read_table(ws.results), stage)["fold"]) == set(stage.params["folds"])


def _evaluate(study: Study, ws: Workspace, stage: Stage) -> Any:
    from bench.evaluate import Request, prepare, run

    p = stage.params
    spec = study.datasets[p["dataset"]["name"]]
    request = Request(dataset=spec.adapter, backbone=p["backbone"], protocol=p["protocol"], split=p["split"],
                      finetuned=p["finetuned"], seed=study.seed, root=spec.root, store=ws.store,
                      reference_dir=Path(p["reference"]) if p["reference"] else None,
                      options=tuple(sorted(spec.options.items())), folds=tuple(p["folds"]), tta=p.get("tta"),
                      power=p.get("power", False))
    return run(prepare(request))


def _keep_evaluation(ws: Workspace, done: Any) -> str:
    """The evaluation's rows into the study's results and predictions tables; the digest of its metrics."""
    from bench.leaderboard import EVALUATION, upsert

    # keyed by the evaluation, not the fold: a study run on fewer folds than before leaves no stale fold rows
    upsert(ws.results, done.results, EVALUATION)
    upsert(ws.predictions, done.predictions, EVALUATION)
    metrics = done.results[["fold", "auc", "map", "acc", "se", "sp", "c"]].to_csv(index=False)
    return hashlib.sha256(metrics.encode()).hexdigest()


# --- study-defined backbones and the study's home -------------------------------------------------------------

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


def _share_caches(user_home: Path, home: Path, study: Study) -> None:
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
