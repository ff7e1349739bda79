"""`bench reproduce`: study files, the stage graph, the ledger that skips finished stages, and whole studies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.errors import BenchError
from bench.reproduce import Action, Ledger, execute, ran_stages
from bench.study import Stage, load_study, plan

# --- the runner, with fake stage functions -------------------------------------------------------------------


def fake_graph(epochs: int = 2) -> list[Stage]:
    return [
        Stage("source a", "source", {"epochs": epochs}),
        Stage("finetune a/f0", "finetune", {"fold": 0}, ("source a",)),
        Stage("finetune a/f1", "finetune", {"fold": 1}, ("source a",)),
        Stage("extract b/frozen", "extract", {"backbone": "b"}),
        Stage("evaluate a", "evaluate", {}, ("finetune a/f0", "finetune a/f1")),
        Stage("evaluate b", "evaluate", {}, ("extract b/frozen",)),
        Stage("report", "report", {}, ("evaluate a", "evaluate b")),
    ]


class FakeWork:
    """Stage functions that write one file per stage whose content depends on the inputs, like real ones."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ran: list[str] = []

    def file(self, stage: Stage) -> Path:
        return self.folder / (stage.key.replace(" ", "_").replace("/", "_") + ".out")

    def run(self, stage: Stage) -> str:
        self.ran.append(stage.key)
        inputs = [self.file(Stage(d, "", {})).read_text() for d in stage.deps]
        content = json.dumps([stage.params, inputs], sort_keys=True)
        self.file(stage).write_text(content)
        return hashlib.sha256(content.encode()).hexdigest()

    def actions(self) -> dict[str, Action]:
        action = Action(run=self.run, present=lambda stage: self.file(stage).is_file())
        return dict.fromkeys(("source", "finetune", "extract", "evaluate", "report"), action)

    def execute(self, stages: list[Stage], identity: dict | None = None):
        ledger = Ledger(self.folder / "ledger.json")
        return execute(stages, ledger, self.actions(), lambda stage: identity or {}, self.folder / "log.jsonl",
                       Console(file=open(self.folder / "console.txt", "a"), width=120))


def test_runner_runs_every_stage_once_then_skips_an_unchanged_study(tmp_path):
    work = FakeWork(tmp_path)
    assert work.execute(fake_graph())["ran"] == 7
    assert work.ran == [s.key for s in fake_graph()]
    ledger = json.loads((tmp_path / "ledger.json").read_text())["stages"]
    assert set(ledger) == {s.key for s in fake_graph()}

    work.ran.clear()
    counts = work.execute(fake_graph())
    assert work.ran == [] and counts["skipped"] == 7
    assert ran_stages(tmp_path / "log.jsonl") == [[s.key for s in fake_graph()], []]


def test_a_changed_setting_reruns_only_the_stages_it_reaches(tmp_path):
    work = FakeWork(tmp_path)
    work.execute(fake_graph(epochs=2))
    work.ran.clear()
    work.execute(fake_graph(epochs=3))
    assert work.ran == ["source a", "finetune a/f0", "finetune a/f1", "evaluate a", "report"]


def test_a_changed_dataset_identity_reruns_what_reads_it(tmp_path):
    work = FakeWork(tmp_path)
    work.execute(fake_graph(), identity={"dataset": "v1"})
    work.ran.clear()
    work.execute(fake_graph(), identity={"dataset": "v2"})
    assert work.ran == [s.key for s in fake_graph()]


def test_a_lost_output_is_remade_and_an_identical_remake_stops_there(tmp_path):
    work = FakeWork(tmp_path)
    work.execute(fake_graph())
    work.file(fake_graph()[1]).unlink()
    work.ran.clear()
    work.execute(fake_graph())
    # the fine-tune is redone; it makes the same output, so nothing downstream of it has to run again
    assert work.ran == ["finetune a/f0"]


def test_a_failing_stage_keeps_everything_finished_before_it(tmp_path):
    work = FakeWork(tmp_path)
    actions = work.actions()

    def broken(stage: Stage) -> str:
        raise BenchError("evaluation exploded")

    actions["evaluate"] = Action(run=broken, present=lambda stage: False)
    with pytest.raises(BenchError, match="exploded"):
        execute(fake_graph(), Ledger(tmp_path / "ledger.json"), actions, lambda s: {}, tmp_path / "log.jsonl",
                Console(file=open(tmp_path / "console.txt", "a")))
    work.ran.clear()
    work.execute(fake_graph())
    assert work.ran == ["evaluate a", "evaluate b", "report"]


def test_a_torn_ledger_is_refused_with_the_fix(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(BenchError, match="delete it"):
        Ledger(tmp_path / "ledger.json")
