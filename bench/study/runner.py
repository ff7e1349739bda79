"""The study runner: runs stages in dependency order on an executor, skipping every stage already done.

Each stage has a fingerprint: a hash of its parameters, of the content identity of the datasets it reads and of
what its upstream stages produced (their digests: checkpoint hashes, model hashes, result rows). The ledger
(`DIR/ledger.json`, rewritten atomically after every stage) keeps each finished stage's fingerprint and digest; a
stage whose fingerprint is unchanged and whose output is still there is skipped. So an interrupted study resumes
where it stopped, an unchanged one finishes at once, and a changed setting reruns only the stages it reaches.
A confirmatory study's ledger also keeps, under `confirmation`, its candidate list as it stood when confirmation
started (`bench.study.plan.candidates`), which later runs are compared with.
`DIR/log.jsonl` records what each run did, one JSON object per event. The live view shows progress per kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bench import atomic
from bench.errors import BenchError
from bench.study.executors import Executor
from bench.context import Context
from bench.work import Work
from bench.progress import clock

KINDS = ("source", "trunk", "finetune", "extract", "evaluate", "report")
# what may differ between a stage and those whose durations estimate its own, from the most alike to the least
ALIKE_BUT = (("fold",), ("fold", "backbone"), ("fold", "backbone", "protocol"))
KIND_TITLES = {"source": "source training", "trunk": "trunk activations", "finetune": "fine-tuning",
               "extract": "export + extraction", "evaluate": "evaluation", "report": "leaderboard + report"}


class Ledger:
    """Finished stages: key -> {fingerprint, digest, seconds, finished}, and the candidate list recorded when
    confirmation started. Rewritten atomically after each change."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        self.confirmation: dict[str, Any] | None = None
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                self.stages, self.confirmation = saved["stages"], saved.get("confirmation")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BenchError(f"{path} is not a study ledger ({exc}); delete it to rerun every stage") from exc

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.stages.get(key)

    def digest(self, key: str) -> str | None:
        entry = self.stages.get(key)
        return entry["digest"] if entry else None

    def record(self, key: str, fingerprint: str, digest: str, seconds: float) -> None:
        self.stages[key] = {"fingerprint": fingerprint, "digest": digest, "seconds": round(seconds, 2),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write()

    def start_confirmation(self, candidates: dict[str, Any]) -> dict[str, Any]:
        """The candidate list recorded when confirmation started: `candidates` (and their fingerprint) if that is
        now, else the one recorded then, which later changes never overwrite."""
        if self.confirmation is None:
            digest = hashlib.sha256(json.dumps(candidates, sort_keys=True).encode()).hexdigest()
            self.confirmation = {**candidates, "fingerprint": digest, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self._write()
        return self.confirmation

    def _write(self) -> None:
        saved = {"stages": self.stages} | ({"confirmation": self.confirmation} if self.confirmation else {})
        # a kill mid-write leaves the previous ledger, never a torn one
        atomic.write_text(self.path, json.dumps(saved, indent=1, sort_keys=True))


@dataclass(frozen=True)
class Action:
    """What the study does with a kind of unit: `run` makes its output, `present` says it still exists, `keep`
    turns what `run` returned into the unit's digest. `run` may run in another process (`--executor ray`); `keep`
    runs in the study's own process, so files that several units add to (the results tables) have a single
    writer."""

    run: Callable[[Work, Context], Any]
    present: Callable[[Work], bool]
    keep: Callable[[Work, Any], str] = lambda unit, digest: digest


def fingerprint(stage: Work, ledger: Ledger, identity: dict[str, Any]) -> str:
    """Hash of everything the stage's output depends on."""
    missing = [d for d in stage.deps if ledger.digest(d) is None]
    if missing:
        raise BenchError(f"stage {stage.key!r} runs before its input(s) {missing}: the stage graph is out of order")
    payload = {"kind": stage.kind, "params": stage.params, "identity": identity,
               "deps": {d: ledger.digest(d) for d in stage.deps}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def execute(stages: list[Work], ledger: Ledger, actions: dict[str, Action], identity: Callable[[Work], dict],
            log: Path, console: Console, executor: Executor) -> Counter:
    """Run `stages` (in dependency order), skipping the ones already done; returns counts of ran / skipped.

    A stage is submitted to the executor (`InProcess`: this process, one stage at a time) as soon as the stages it
    depends on are done or skipped. After a failure nothing new starts, the running stages finish and are
    recorded, then the first error is raised."""
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
                # the count and time left on each line too: a study run into a log file shows no live view
                console.print(f"[green]done[/green] {escape(done.stage.key)} [dim]({clock(done.seconds)}) · "
                              f"{view.finished}/{len(stages)} stages, {view.time_left()}[/dim]", highlight=False,
                              soft_wrap=True)  # one line per stage in a log file, however long
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


def _signature(stage: Work, leaving_out: tuple[str, ...]) -> str:
    """The stage's kind and parameters but those named."""
    params = {k: v for k, v in stage.params.items() if k not in leaving_out}
    return json.dumps([stage.kind, params], sort_keys=True, default=str)


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

    def __init__(self, stages: list[Work], ledger: Ledger):
        self.left = Counter(s.kind for s in stages)
        self.done: Counter = Counter()
        self.skipped: Counter = Counter()
        self.pending = {s.key: s for s in stages}
        self.ledger = ledger
        self.ran_seconds = 0.0  # how long the stages this run finished took, together
        self.running: dict[str, tuple[Work, float]] = {}  # key -> stage, when it started (several on Ray)
        self.run_started = time.monotonic()
        self.total = len(stages)
        # stages alike but for their fold, then also their backbone, then also their design, take about as long (a
        # fine-tune from a trunk cache: a fraction of one from random weights; a set from the cache: of a frozen one)
        self.alike = {s.key: [_signature(s, out) for out in ALIKE_BUT] + [s.kind] for s in stages}

    def start(self, stage: Work) -> None:
        self.running[stage.key] = (stage, time.monotonic())

    def finish(self, stage: Work, seconds: float | None) -> None:
        """`seconds` is None for a skipped stage."""
        self.running.pop(stage.key, None)
        self.left[stage.kind] -= 1
        self.pending.pop(stage.key)
        if seconds is None:
            self.skipped[stage.kind] += 1
        else:
            self.done[stage.kind] += 1
            self.ran_seconds += seconds

    def estimate(self, stage: Work, means: list[dict[str, float]] | None = None) -> float | None:
        """This stage's last duration, else the mean of the finished stages most alike (`ALIKE_BUT`), else of its
        kind; None: unknown. `means`: `self.means()`, computed once for many stages."""
        entry = self.ledger.entry(stage.key)
        if entry:
            return entry["seconds"]
        means = means or self.means()
        return next((level[signature] for level, signature in zip(means, self.alike[stage.key]) if signature in level),
                    None)

    def means(self) -> list[dict[str, float]]:
        """Per level of likeness, the mean duration of the finished stages of each signature (the ledger holds every
        finished stage's duration, this run's included)."""
        levels: list[dict[str, list[float]]] = [{} for _ in range(len(ALIKE_BUT) + 1)]
        for key, entry in self.ledger.stages.items():
            signatures = self.alike.get(key, [None] * len(ALIKE_BUT) + [key.split(" ")[0]])
            for level, signature in zip(levels, signatures):
                if signature is not None:
                    level.setdefault(signature, []).append(entry["seconds"])
        return [{signature: sum(s) / len(s) for signature, s in level.items()} for level in levels]

    @property
    def finished(self) -> int:
        """Stages run or skipped so far in this run."""
        return self.total - len(self.pending)

    def parallelism(self) -> float:
        """How many stages this run has had at work at once, on average (Ray runs several): the seconds its
        finished stages took over the time it has run; 1 before any finished."""
        return max(1.0, self.ran_seconds / max(time.monotonic() - self.run_started, 1e-9))

    def time_left(self) -> str:
        means = self.means()
        estimates = [self.estimate(s, means) for s in self.pending.values()]
        known = sum(e for e in estimates if e is not None)
        at_once = self.parallelism()
        late = 0  # stages at work for longer than expected: what they still need is not known
        # Ray queues what it cannot start yet: only the stages submitted first are at work
        for stage, started in sorted(self.running.values(), key=lambda run: run[1])[:round(at_once)]:
            ran, expected = time.monotonic() - started, self.estimate(stage, means) or 0
            known -= min(ran, expected)
            late += 0 < expected < ran
        known /= at_once
        overdue = "" if not late else f", {late} stage{'s' if late > 1 else ''} running longer than usual"
        unknown = sorted({s.kind for s, e in zip(self.pending.values(), estimates) if e is None})
        if unknown:
            kinds = ", ".join(KIND_TITLES[k] for k in unknown)
            return f"at least {clock(max(known, 0))} left (no timing yet for {kinds}){overdue}"
        return f"about {clock(max(known, 0))} left{overdue}"

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
            lines.append(Text(f"running: {stage.key} ({clock(time.monotonic() - started)})", "bold"))
        lines.append(Text(f"elapsed {clock(time.monotonic() - self.run_started)}, {self.time_left()}", "dim"))
        return Group(*lines)
