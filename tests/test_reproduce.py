"""`bench reproduce`: study files, the stage graph, the ledger that skips finished stages, and whole studies."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.context import Context
from bench.errors import BenchError
from bench.study.executors import InProcess
from bench.study.plan import StudyData, plan
from bench.study.reproduce import reproduce
from bench.study.runner import Action, Ledger, StudyView, execute, fingerprint, ran_stages
from bench.study.schema import load_study
from bench.study.workspace import Workspace

# --- the runner, with fake stage functions -------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """What the runner needs of a stage, with free-form parameters."""

    key: str
    kind: str
    params: dict
    deps: tuple[str, ...] = ()


CTX = Context(Path("unused"), "unused")  # the fake stages read nothing from it


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

    def run(self, stage: Stage, ctx: Context) -> str:
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
                       Console(file=open(self.folder / "console.txt", "a"), width=120), InProcess(CTX))


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


def test_each_finished_stage_says_how_far_the_study_is_and_how_long_it_has_left(tmp_path):
    """A study run into a log file shows no live view: its lines must say it."""
    work = FakeWork(tmp_path)
    work.execute(fake_graph())
    done = [line for line in (tmp_path / "console.txt").read_text().splitlines() if line.startswith("done ")]
    assert [re.search(r" · (\d+)/7 stages, ", line).group(1) for line in done] == [str(i) for i in range(1, 8)]
    assert done[-1].endswith("7/7 stages, about 0:00 left")
    work.execute([Stage("source " + "a" * 120, "source", {})])  # a long key stays on one line in a log file
    last = [line for line in (tmp_path / "console.txt").read_text().splitlines() if line.startswith("done ")][-1]
    assert last.startswith("done source aaaa") and last.endswith("1/1 stages, about 0:00 left")


def test_the_time_left_counts_stages_that_run_side_by_side(tmp_path):
    stages = fake_graph()
    ledger = Ledger(tmp_path / "ledger.json")
    for stage in stages:  # an earlier run took 100 s per stage
        ledger.record(stage.key, "fingerprint", "digest", 100.0)
    view = StudyView(stages, ledger)
    view.run_started = time.monotonic() - 100  # this run finished two of them in its first 100 s: two at a time
    for stage in stages[:2]:
        view.start(stage)
        view.finish(stage, 100.0)
    assert view.parallelism() == pytest.approx(2, rel=0.01)
    assert view.time_left() == "about 4:10 left"  # five stages of 100 s, two at a time
    for stage in stages[2:5]:  # three submitted 60 s ago: two at work, the third queued by Ray
        view.running[stage.key] = (stage, time.monotonic() - 60)
    assert view.time_left() == "about 3:10 left"
    view.running = {stages[2].key: (stages[2], time.monotonic() - 150)}  # past the 100 s it took before
    assert view.time_left() == "about 3:20 left, 1 stage running longer than usual"


def test_a_stage_never_run_is_expected_to_take_as_long_as_those_alike_but_for_their_fold(tmp_path):
    def stages(backbone: str, recipe: str, protocol: str = "mela-vs-ben") -> list[Stage]:
        return [Stage(f"finetune skin/{backbone}/{protocol}-f{i}", "finetune",
                      {"backbone": backbone, "protocol": protocol, "fold": f"f{i}", "recipe": recipe})
                for i in range(2)]

    # from random weights every layer trains; from a trained start, only the top from a trunk cache
    scratch, cached, double, other = stages("scratch", "whole"), stages("cached", "top"), stages("double", "top"), \
        stages("other", "top-longer")
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.record(scratch[0].key, "fingerprint", "digest", 240.0)
    ledger.record(cached[0].key, "fingerprint", "digest", 60.0)
    view = StudyView(scratch + cached + double + other + [Stage("evaluate skin/cached", "evaluate", {})], ledger)
    assert view.estimate(cached[1]) == 60.0 and view.estimate(scratch[1]) == 240.0
    assert view.estimate(double[0]) == 60.0  # the same recipe on another backbone
    other_design = stages("double", "top", "mal-vs-ben")
    assert StudyView(cached + other_design, ledger).estimate(other_design[0]) == 60.0  # ... and another design
    assert view.estimate(other[0]) == 150.0  # none alike has run: its kind's mean
    assert view.estimate(Stage("evaluate skin/cached", "evaluate", {})) is None


def test_the_runner_reruns_only_the_stages_a_changed_setting_reaches(tmp_path):
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

    def broken(stage: Stage, ctx: Context) -> str:
        raise BenchError("evaluation exploded")

    actions["evaluate"] = Action(run=broken, present=lambda stage: False)
    with pytest.raises(BenchError, match="exploded"):
        execute(fake_graph(), Ledger(tmp_path / "ledger.json"), actions, lambda s: {}, tmp_path / "log.jsonl",
                Console(file=open(tmp_path / "console.txt", "a")), InProcess(CTX))
    work.ran.clear()
    work.execute(fake_graph())
    assert work.ran == ["evaluate a", "evaluate b", "report"]


def test_a_torn_ledger_is_refused_with_the_fix(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(BenchError, match="delete it"):
        Ledger(tmp_path / "ledger.json")


# --- study files ----------------------------------------------------------------------------------------------

TINY = """
description = "a tiny study for the tests"
recipe = "demo"
seed = 0
overrides = { epochs = 1, image_size = 32, batch_size = 8 }
architectures = ["efficientnet-lite0", "lite0-double"]

[datasets.skin]
adapter = "synthetic"
options = { n = 80, size = 48 }

[datasets.fundus]
adapter = "synthetic-fundus"
options = { n = 40, size = 32, seed = 0 }

[backbones.lite0-double]
like = "efficientnet-lite0"
source = "fundus"

[transfer]
imagenet = "efficientnet-lite0"
double = "lite0-double"

[[evaluate]]
dataset = "skin"
split = "official"
protocols = ["mela-vs-ben"]
frozen = ["efficientnet-lite0", "lite0-double"]
finetuned = ["efficientnet-lite0", "lite0-double"]
"""


def write_study(folder: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("change, message", [
    (("recipe = \"demo\"", "recipe = \"demo\"\nbogus = 1"), "bogus: unknown key; allowed: architectures,"),
    (("recipe = \"demo\"", ""), "recipe: missing"),
    (("recipe = \"demo\"", "recipe = \"nope\""), "recipe: unknown recipe 'nope'"),
    (("adapter = \"synthetic\"", "adapter = \"ham10000\""), "datasets.skin.root: not set"),
    (("adapter = \"synthetic\"", "adapter = \"nope\""), "datasets.skin.adapter: unknown dataset 'nope'"),
    (("options = { n = 80, size = 48 }", "options = { n = 80 }\nlimit = 10"), "datasets.skin.limit"),
    (("protocols = [\"mela-vs-ben\"]", "protocols = [\"mela\"]"), "evaluate[0].protocols: unknown protocol 'mela'"),
    (("split = \"official\"", "split = \"3x3\""), "evaluate[0].split: unknown split '3x3'"),
    (("finetuned = [\"efficientnet-lite0\", \"lite0-double\"]", "finetuned = [\"lite1\"]"),
     "evaluate[0].finetuned[0]: unknown backbone 'lite1'"),
    (("finetuned = [\"efficientnet-lite0\", \"lite0-double\"]", "finetuned = [\"retino\"]"),
     "name the study's dataset for it under [sources]"),
    (("like = \"efficientnet-lite0\"", "like = \"lite9\""), "backbones.lite0-double.like: unknown backbone 'lite9'"),
    (("source = \"fundus\"", "source = \"eyes\""), "backbones.lite0-double.source: 'eyes' is not a dataset"),
    (("source = \"fundus\"", "source = \"fundus\"\nweights = \"random\""), "define the random backbone first"),
    (("imagenet = ", "web = "), "transfer.web: must be one of 'none', 'retino', 'imagenet' or 'double'"),
    (("[[evaluate]]", "[[evaluate]\n"), "not a readable TOML study file"),
    (("seed = 0", "seed = -1"), "seed: must be zero or more"),
    (("epochs = 1", "epohcs = 1"), "overrides.epohcs: unknown key (did you mean 'epochs'?)"),
    (("protocols = [\"mela-vs-ben\"]", "protocol = [\"mela-vs-ben\"]"),
     "evaluate[0].protocol: unknown key (did you mean 'protocols'?)"),
])
def test_a_bad_study_file_is_refused_naming_the_file_and_the_key(tmp_path, change, message):
    old, new = change
    assert old in TINY
    path = write_study(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(BenchError) as error:
        load_study(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_dataset_root_can_be_given_on_the_command_line(tmp_path):
    path = write_study(tmp_path, TINY.replace('adapter = "synthetic"', 'adapter = "folder"', 1))
    with pytest.raises(BenchError, match="--root skin=PATH"):
        load_study(path)
    assert load_study(path, {"skin": tmp_path}).datasets["skin"].root == tmp_path
    with pytest.raises(BenchError, match=r"no dataset\(s\) \['eyes'\] in this study"):
        load_study(path, {"skin": tmp_path, "eyes": tmp_path})


def test_the_demo_plans_every_column_of_table_1_in_dependency_order():
    study = load_study("demo")
    stages = plan(study, {0: ["r0f0"]}, Workspace(Path("unused")).context(study))
    kinds = [s.kind for s in stages]
    assert kinds.count("source") == 2 and kinds.count("finetune") == 4 * 3 and kinds.count("report") == 1
    assert kinds.count("evaluate") == (2 + 4) * 3 and kinds.count("extract") == 2 + 12
    position = {s.key: i for i, s in enumerate(stages)}
    assert all(position[d] < position[s.key] for s in stages for d in s.deps)
    # the six columns of Table 1, three designs each
    evaluated = {(s.params["backbone"], s.params["finetuned"]) for s in stages if s.kind == "evaluate"}
    columns = [("none", True), ("retino", False), ("retino", True), ("imagenet", False), ("imagenet", True),
               ("double", True)]
    assert {(study.transfer[c], ft) for c, ft in columns} <= evaluated
    by_key = {s.key: s for s in stages}
    # retino starts from the study's random Lite0, so its source stage trains every layer; ImageNet FT does not
    assert by_key["source lite0-retino"].params["recipe"]["train_last"] is None
    assert by_key["source lite0-double"].params["recipe"]["train_last"] == study.recipe.train_last
    assert by_key["finetune skin/lite0-scratch/ft-mela-vs-ben-r0f0"].params["recipe"]["train_last"] is None
    assert by_key["finetune skin/lite0-retino/ft-mela-vs-ben-r0f0"].deps == ("source lite0-retino",)


def test_what_only_the_report_shows_renders_the_report_again_and_nothing_else(tmp_path):
    def params(text: str) -> dict[str, dict]:
        study = load_study(write_study(tmp_path, text))
        return {s.key: s.params for s in plan(study, {0: ["official"]}, Workspace(tmp_path).context(study))}

    before = params(TINY)
    for old, new in [('"a tiny study for the tests"', '"another description"'),
                     ('double = "lite0-double"', 'retino = "lite0-double"'),
                     ('architectures = ["efficientnet-lite0", "lite0-double"]', 'architectures = ["lite0-double"]'),
                     ('recipe = "demo"', 'recipe = "demo"\nbaseline = "efficientnet-lite0"')]:
        after = params(TINY.replace(old, new))
        assert [key for key in before if before[key] != after[key]] == ["report"], old


def test_every_built_in_study_reads_or_says_which_root_to_fill_in(tmp_path):
    from bench.study.schema import builtin_studies

    for name in builtin_studies():
        try:
            load_study(name)
        except BenchError as error:
            assert "root" in str(error), str(error)


@pytest.mark.slow
@pytest.mark.parametrize("name, folder, datasets", [
    ("menegola2017-cpu", "menegola2017-cpu", ("ham10000", "retinopathy")),
    ("beyond", "beyond", ("ham10000", "ph2")),
    ("leaderboard/beyond/ph2-cpu/ph2-cpu.toml", "beyond/ph2-cpu", ("ham10000", "ph2")),
    ("leaderboard/finetune224/finetune224.toml", "finetune224", ("ham10000",)),
    ("leaderboard/finetune224-two-blocks/finetune224-two-blocks.toml", "finetune224-two-blocks", ("ham10000",)),
    ("leaderboard/finetune224-bf16/finetune224-bf16.toml", "finetune224-bf16", ("ham10000",)),
    ("menegola2017-cpu10", "menegola2017-cpu10", ("ham10000", "retinopathy")),
])
def test_the_committed_study_ledgers_are_still_valid(shared_data, tmp_path, name, folder, datasets):
    """Every stage of a published study keeps its fingerprint, so a rerun of it skips everything: a change
    that breaks this must say why the published study has to run again."""
    root = Path(__file__).resolve().parents[1]
    folders = {"ham10000": "ham10000", "retinopathy": "kaggle-dr", "ph2": "ph2"}
    study = load_study(str(root / name) if name.endswith(".toml") else name,
                       {d: shared_data / folders[d] for d in datasets})
    ledger = Ledger(root / "leaderboard" / folder / "ledger.json")
    ctx = Workspace(tmp_path).context(study)
    data = StudyData.load(study, ctx)
    stages = plan(study, data.fold_keys, ctx)
    changed = [s.key for s in stages if fingerprint(s, ledger, data.identity(s)) != ledger.entry(s.key)["fingerprint"]]
    assert len(stages) == len(ledger.stages) and changed == []


# --- whole studies --------------------------------------------------------------------------------------------

def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from bench.cli import main; main()", *args]


def wait_for_finished_stages(ledger: Path, process: subprocess.Popen, count: int, timeout: float = 300) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ledger.is_file():
            finished = set(json.loads(ledger.read_text())["stages"])
            if len(finished) >= count:
                return finished
        time.sleep(0.1)
    raise AssertionError(f"the study stopped early (exit code {process.poll()}): {process.stderr.read().decode()}")


@pytest.fixture(scope="module")
def killed_then_finished(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """The tiny study run in a subprocess, killed once two stages are done, then run again to the end.

    Module-scoped (every real stage costs seconds): the tests below read what it left, and change copies of it;
    they are marked slow (about a minute together here), so `-m "not slow"` skips the study.
    """
    folder = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_HOME", str(folder / "user-home"))
        path, out = write_study(folder), folder / "out"
        process = subprocess.Popen(bench_command("reproduce", str(path), "--out", str(out)), env=os.environ,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            finished = wait_for_finished_stages(out / "ledger.json", process, 2)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        reproduce(load_study(path), out, quiet_console())
    return path, out, finished


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.mark.slow
def test_a_killed_study_resumes_without_redoing_a_finished_stage(killed_then_finished):
    path, out, finished_before_kill = killed_then_finished
    first, second = ran_stages(out / "log.jsonl")
    assert finished_before_kill <= set(first)
    assert not finished_before_kill & set(second)  # nothing finished was redone...
    study = load_study(path)
    everything = {s.key for s in plan(study, {0: ["official"]}, Workspace(out).context(study))}
    assert set(json.loads((out / "ledger.json").read_text())["stages"]) == everything  # ...and all got done


@pytest.mark.slow
def test_the_report_lays_out_the_papers_tables_from_real_runs(killed_then_finished):
    _, out, _ = killed_then_finished
    report = (out / "report.md").read_text()
    assert "SYNTHETIC DATA" in report
    row = next(line for line in report.splitlines() if line.startswith("| mela-vs-ben |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Table 1, all eight columns: ImageNet without and with FT and double transfer with FT measured here (AUC and
    # its interval) beside the paper's figures; double transfer frozen measured (the paper has no such column)
    measured = r"\d+\.\d \(\d+\.\d–\d+\.\d\)"
    assert re.fullmatch(measured + r" \[77\.9\]", cells[5]) and re.fullmatch(measured + r" \[80\.9\]", cells[6])
    assert re.fullmatch(measured, cells[7]) and re.fullmatch(measured + r" \[80\.9\]", cells[8])
    assert cells[1] == "" and cells[2] == "– [75.7]"  # no transfer was not run
    claim = next(line for line in report.splitlines() if "fine-tuning helps (ImageNet)" in line)
    assert "| efficientnet-lite0 FT | efficientnet-lite0 no FT |" in claim
    assert "(roc-synthetic-mela-vs-ben.png)" in report
    assert (out / "roc-synthetic-mela-vs-ben.png").stat().st_size > 0 and (out / "leaderboard.md").is_file()
    results = pd.read_csv(out / "results.csv")
    assert set(zip(results["backbone"], results["finetuned"])) == {
        ("efficientnet-lite0", False), ("efficientnet-lite0", True), ("lite0-double", False), ("lite0-double", True)}


def table(report: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under the report's heading that starts with `heading`."""
    section = report.split(f"\n{heading}", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.mark.slow
def test_the_report_has_tables_2_3_4_and_the_referral_table(killed_then_finished):
    from protocols import stats

    _, out, _ = killed_then_finished
    report = (out / "report.md").read_text()
    percent = r"\d+\.\d"
    # Table 2: every metric of each model on the official split, then the paper's rows in italics
    header, *rows = table(report, "## Table 2 · synthetic")
    assert header == ["model", "design", "AUC", "mAP", "ACC", "SE", "SP"]
    models = [r[0] for r in rows if not r[0].startswith("*")]
    assert sorted(models) == ["efficientnet-lite0 FT", "efficientnet-lite0 no FT", "lite0-double FT",
                              "lite0-double no FT"]
    assert all(re.fullmatch(percent, c) for r in rows if not r[0].startswith("*") for c in r[2:])
    # the paper's printed SE/SP (its code's precision and NPV) beside the true ones its confusion matrix gives
    assert ["*paper: VGG-16, ImageNet + FT (as printed)*", "mela-vs-ben", "*80.7*", "*54.9*", "*79.2*", "*47.6*",
            "*88.1*"] in rows
    assert ["*paper: VGG-16, ImageNet + FT (true SE, SP)*", "mela-vs-ben", "*80.7*", "*54.9*", "*79.2*", "*53.3*",
            "*85.5*"] in rows
    assert "TP 40, FN 35, TN 260, FP 44" in report
    # Table 3: the study's architectures (fine-tuned), the paper's, and the paired test of the second against the first
    header, *rows = table(report, "## Table 3 · synthetic")
    assert header == ["architecture", "mela-vs-ben"]
    assert [r[0] for r in rows[:2]] == ["efficientnet-lite0", "lite0-double"]
    assert all(re.fullmatch(rf"{percent} \({percent}–{percent}\)", r[1]) for r in rows[:2])
    assert ["*paper: VGG-16*", "*83.5*"] in rows
    assert any(r[1] == "lite0-double vs efficientnet-lite0" for r in rows)
    # Table 4: AUC per difficulty level of ImageNet + FT, the paper's figures in brackets
    header, *rows = table(report, "## Table 4 · synthetic")
    assert header == ["design", "low", "medium", "high", "all"] and len(rows) == 1
    design, *cells = rows[0]
    assert design == "mela-vs-ben" and re.fullmatch(rf"{percent} \[80\.9\]", cells[3])
    assert all(re.fullmatch(rf"({percent}|–) \[{paper}\]", c) for c, paper in zip(cells, ("93.0", "79.6", "56.6")))
    # Referral: sensitivity at fixed shares referred, then the shares referred for target sensitivities
    header, *rows = table(report, "## Referral · synthetic")
    assert len(header) == 1 + len(stats.REFERRAL_FRACTIONS) + len(stats.REFERRAL_TARGETS) and len(rows) == 1
    assert rows[0][0] == "mela-vs-ben" and all(re.fullmatch(r"\d+", c) for c in rows[0][1:])
    # the paper's claims: both tests and the Holm-adjusted larger p side by side, the verdict on the adjusted one
    header, *rows = table(report, "### The paper's claims, tested")
    assert header[5:] == ["bootstrap p", "F / t p", "Holm p", "verdict"] and rows
    for row in rows:
        bootstrap, training, holm = row[5:8]
        assert re.fullmatch(r"(< )?[\d.e-]+", bootstrap) and not bootstrap.startswith("< 0.001")  # 2/B at most
        assert (holm != "–" and float(holm.removeprefix("< ")) < 0.05) == ("beats" in row[8])
        assert (training == "–") == (row[8] == "one fold: no verdict")


@pytest.mark.slow
def test_an_unchanged_study_finishes_at_once(killed_then_finished, monkeypatch):
    path, out, _ = killed_then_finished
    from bench.train import loop

    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("trained again"))
    counts = reproduce(load_study(path), out, quiet_console())
    assert counts["ran"] == 0 and counts["skipped"] == 12


@pytest.mark.slow
def test_a_changed_setting_reruns_only_the_stages_it_reaches(killed_then_finished, tmp_path):
    path, out, _ = killed_then_finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    changed = write_study(tmp_path, path.read_text().replace("n = 40, size = 32, seed = 0", "n = 40, size = 32, "
                                                             "seed = 1"))
    reproduce(load_study(changed), copy, quiet_console())
    # the fine-tuned ImageNet chain does not read the fundus images and is left alone
    assert ran_stages(copy / "log.jsonl")[-1] == [
        "source lite0-double", "extract skin/lite0-double/frozen", "finetune skin/lite0-double/ft-mela-vs-ben-official",
        "extract skin/lite0-double/ft-mela-vs-ben-official", "evaluate skin/lite0-double/mela-vs-ben/frozen",
        "evaluate skin/lite0-double/mela-vs-ben/ft", "report"]



# --- levers: fusion, TTA, power normalisation and sizes in a study, tested against a baseline -------------------

LEVERS = """
description = "levers against a baseline, tiny"
recipe = "demo"
seed = 0
baseline = "efficientnet-lite0@32"
bootstrap_draws = 500

[datasets.skin]
adapter = "synthetic"
options = { n = 80, size = 48 }

[[evaluate]]
dataset = "skin"
split = "5x2"
folds = ["r0f0", "r0f1"]
protocols = ["mela-vs-ben"]
frozen = ["efficientnet-lite0@32", "efficientnet-lite0@32 [power]", "efficientnet-lite0@32 [tta dihedral]",
          "efficientnet-lite0@32+efficientnet-lite0@48 [tta dihedral, power]"]
"""


def test_a_study_plans_levers_on_shared_feature_sets(tmp_path):
    study = load_study(write_study(tmp_path, LEVERS, "levers"))
    stages = plan(study, {0: ["r0f0", "r0f1"]}, Workspace(tmp_path).context(study))
    by_key = {s.key: s for s in stages}
    assert sorted(k for k in by_key if k.startswith("extract")) == [
        "extract skin/efficientnet-lite0@32/frozen", "extract skin/efficientnet-lite0@32/frozen-tta-dihedral",
        "extract skin/efficientnet-lite0@48/frozen-tta-dihedral"]
    fused = by_key["evaluate skin/efficientnet-lite0@32+efficientnet-lite0@48 [tta dihedral, power]/mela-vs-ben/frozen"]
    assert fused.params["tta"] == "dihedral" and fused.params["power"] is True and len(fused.deps) == 2
    plain = by_key["evaluate skin/efficientnet-lite0@32/mela-vs-ben/frozen"]
    assert "tta" not in plain.params and "power" not in plain.params  # older studies keep their fingerprints


@pytest.mark.parametrize("frozen, message", [
    ('"efficientnet-lite0 [tta flips]"', "--tta 'flips' is not known"),
    ('"efficientnet-lite0+lite9"', "unknown backbone 'lite9'"),
    ('"efficientnet-lite0 [sharpen]"', "BACKBONE [tta dihedral, power]"),
])
def test_a_bad_lever_is_refused_naming_the_key(tmp_path, frozen, message):
    text = LEVERS.replace('frozen = ["efficientnet-lite0@32", ', f"frozen = [{frozen}, ", 1)
    with pytest.raises(BenchError, match=re.escape(message)):
        load_study(write_study(tmp_path, text, "levers"))


@pytest.mark.slow  # exports two networks, extracts three feature sets, runs four evaluations
def test_the_levers_report_tests_each_configuration_against_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    reproduce(load_study(write_study(tmp_path, LEVERS, "levers")), out, quiet_console())
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| mela-vs-ben | `")]
    assert [r.split("|")[2].strip() for r in rows] == [
        "`efficientnet-lite0@32`", "`efficientnet-lite0@32 [power]`", "`efficientnet-lite0@32 [tta dihedral]`",
        "`efficientnet-lite0@32+efficientnet-lite0@48 [tta dihedral, power]`"]
    assert "baseline" in rows[0] and all(re.search(r"\| [+-]\d+\.\d \([+-]\d+\.\d to [+-]\d+\.\d\) \|", r)
                                         for r in rows[1:])
    # two folds of a 5x2 split: the corrected t-test beside the bootstrap, whose resolution is 2/500
    assert all(re.search(r"\| (< 0\.004|[\d.e-]+) \| [\d.e-]+ \(t\) \| (< )?[\d.e-]+ \|$", r) for r in rows[1:])
    assert "(500 draws;" in report
    results = pd.read_csv(out / "results.csv")
    assert results.groupby("backbone")["tta"].first().to_dict()["efficientnet-lite0@32 [tta dihedral]"] == "dihedral"
    # the honest best: per fold the configuration of highest validation AUC (first listed on a tie), scored on test
    order = {r.split("|")[2].strip().strip("`"): i for i, r in enumerate(rows)}
    picks = (results.assign(order=results["backbone"].map(order))
             .sort_values(["fold", "validation_auc", "order"], ascending=[True, False, True]).drop_duplicates("fold"))
    chosen = next(line for line in report.splitlines() if line.startswith("| mela-vs-ben | chosen per fold by"))
    assert f"| {100 * picks['auc'].mean():.1f} ± " in chosen
    assert re.search(r"\| [+-]\d+\.\d \([+-]\d+\.\d to [+-]\d+\.\d\) \|", chosen)


def test_a_study_plans_an_external_evaluation_with_both_datasets_sets(tmp_path):
    text = TINY.replace("[datasets.fundus]", "[datasets.other]\nadapter = \"folder\"\n\n[datasets.fundus]") + """
[[evaluate]]
dataset = "other"
train = "skin"
protocols = ["mela-vs-ben"]
frozen = ["efficientnet-lite0 [power]"]
"""
    study = load_study(write_study(tmp_path, text), {"other": tmp_path})
    units = {u.key: u for u in plan(study, {0: ["official"], 1: ["all"]}, Workspace(tmp_path).context(study))}
    external = units["evaluate skin->other/efficientnet-lite0 [power]/mela-vs-ben/frozen"]
    assert external.split == "external" and external.train_dataset.name == "skin" and external.power
    assert set(external.deps) == {"extract skin/efficientnet-lite0/frozen", "extract other/efficientnet-lite0/frozen"}
    with pytest.raises(BenchError, match=r"evaluate\[1\].train: 'eyes' is not a dataset"):
        load_study(write_study(tmp_path, text.replace('train = "skin"', 'train = "eyes"')), {"other": tmp_path})
    with pytest.raises(BenchError, match=r"evaluate\[1\].finetuned: an external evaluation"):
        load_study(write_study(tmp_path, text.replace('frozen = ["efficientnet-lite0 [power]"]',
                                                      'finetuned = ["efficientnet-lite0"]')), {"other": tmp_path})


# --- confirmatory studies: candidates chosen on development folds, tested on data they were not chosen on ----------

CONFIRM = """
description = "levers confirmed on fresh partitions, tiny"
recipe = "demo"
seed = 0
baseline = "efficientnet-lite0@32"
bootstrap_draws = 200

[datasets.skin]
adapter = "synthetic"
options = { n = 80, size = 48 }

[confirm]
seeds = [1]

[[evaluate]]
dataset = "skin"
split = "5x2"
folds = ["r0f0", "r0f1"]
protocols = ["mela-vs-ben"]
frozen = ["efficientnet-lite0@32", "efficientnet-lite0@32 [power]"]
"""


def test_a_confirmatory_study_plans_its_candidates_on_fresh_partitions_and_external_pairs(tmp_path):
    from bench.study.plan import candidates

    text = CONFIRM.replace("seeds = [1]", 'seeds = [1]\nexternal = [{ train = "other", dataset = "skin" }]')
    text = text.replace("[confirm]", '[datasets.other]\nadapter = "synthetic-fundus"\n\n[confirm]')
    study = load_study(write_study(tmp_path, text, "confirm"))
    units = plan(study, {0: ["r0f0", "r0f1"]}, Workspace(tmp_path).context(study))
    evaluations = {u.key: u for u in units if u.kind == "evaluate"}
    assert sorted(evaluations) == [
        "evaluate other->skin/efficientnet-lite0@32 [power]/mela-vs-ben/frozen",
        "evaluate other->skin/efficientnet-lite0@32/mela-vs-ben/frozen",
        "evaluate skin/efficientnet-lite0@32 [power]/mela-vs-ben/frozen",
        "evaluate skin/efficientnet-lite0@32 [power]/mela-vs-ben/frozen seed 1",
        "evaluate skin/efficientnet-lite0@32/mela-vs-ben/frozen",
        "evaluate skin/efficientnet-lite0@32/mela-vs-ben/frozen seed 1"]
    fresh = evaluations["evaluate skin/efficientnet-lite0@32/mela-vs-ben/frozen seed 1"]
    assert fresh.seed == 1 and fresh.folds == ("r0f0", "r0f1") and fresh.split == "5x2"
    assert evaluations["evaluate other->skin/efficientnet-lite0@32/mela-vs-ben/frozen"].split == "external"
    # the development units keep the keys and fingerprints they had without [confirm]
    plain = load_study(write_study(tmp_path, CONFIRM.replace("[confirm]\nseeds = [1]\n", ""), "plain"))
    before = {u.key: u.params for u in plan(plain, {0: ["r0f0", "r0f1"]}, Workspace(tmp_path).context(plain))}
    assert all(evaluations[key].params == params for key, params in before.items() if key.startswith("evaluate"))
    # the candidate list: the development candidates only, each with the fingerprint of what was chosen for it
    listed = candidates(study, units)
    assert sorted(listed["candidates"]) == ["skin/mela-vs-ben/efficientnet-lite0@32",
                                            "skin/mela-vs-ben/efficientnet-lite0@32 [power]"]
    assert listed["rule"]["baseline"] == "efficientnet-lite0@32"


@pytest.mark.parametrize("change, message", [
    (("seeds = [1]", "seeds = [0]"), "confirm.seeds: seed 0 draws the development partitions"),
    (("seeds = [1]", "seeds = [\"one\"]"), "confirm.seeds[0]: must be a whole number"),
    (("seeds = [1]", "seed = [1]"), "confirm.seed: unknown key (did you mean 'seeds'?)"),
    (("seeds = [1]", ""), "confirm: names no confirmation data"),
    (("seeds = [1]", 'external = [{ train = "eyes", dataset = "skin" }]'),
     "confirm.external[0].train: 'eyes' is not a dataset"),
    (("seeds = [1]", 'external = [{ train = "skin" }]'), "confirm.external[0].dataset: missing: name the dataset"),
])
def test_a_bad_confirm_table_is_refused_naming_the_key(tmp_path, change, message):
    path = write_study(tmp_path, CONFIRM.replace(*change), "confirm")
    with pytest.raises(BenchError) as error:
        load_study(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


DEVELOPMENT_EXTERNAL = """
[[evaluate]]
dataset = "skin"
train = "other"
protocols = ["mela-vs-ben"]
frozen = ["efficientnet-lite0@32"]
"""


@pytest.mark.parametrize("change, more, message", [
    (('split = "5x2"\nfolds = ["r0f0", "r0f1"]', 'split = "official"'), "",
     "confirm.seeds: no [[evaluate]] uses split"),
    (('frozen = [', 'finetuned = ["efficientnet-lite0"]\nfrozen = ['), "", "fine-tuned candidates, which cannot be"),
    (("seeds = [1]", 'external = [{ train = "skin", dataset = "other" }]'), "",
     "confirm.external[0].dataset: no [[evaluate]] on 'other'"),
    (("seeds = [1]", 'external = [{ train = "skin", dataset = "skin" }]'), "",
     "confirm.external[0]: train and dataset are both 'skin'"),
    (("seeds = [1]", 'external = [{ train = "other", dataset = "skin" }]'), DEVELOPMENT_EXTERNAL,
     "confirm.external[0]: an [[evaluate]] already scores other -> skin in development"),
])
def test_confirmation_that_would_confirm_nothing_or_fine_tuned_candidates_is_refused(tmp_path, change, more, message):
    text = CONFIRM.replace("[confirm]", '[datasets.other]\nadapter = "synthetic-fundus"\n\n[confirm]')
    study = load_study(write_study(tmp_path, text.replace(*change) + more, "confirm"))
    with pytest.raises(BenchError, match=re.escape(message)):
        plan(study, {0: ["r0f0"]}, Workspace(tmp_path).context(study))


def test_a_candidate_added_or_changed_after_confirmation_started_is_flagged():
    from bench.study.plan import changed_since

    started = {"rule": {"baseline": "a"}, "candidates": {"x/p/a": "1", "x/p/b": "2"}}
    now = {"rule": {"baseline": "a"}, "candidates": {"x/p/a": "1", "x/p/b": "3", "x/p/c": "4"}}
    assert changed_since(started, now) == {"x/p/b": "changed after confirmation started",
                                           "x/p/c": "added after confirmation started"}
    assert changed_since(started, started) == {}
    moved = {**started, "rule": {"baseline": "b"}}
    assert set(changed_since(started, moved)) == {"x/p/a", "x/p/b"}


def lever_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The levers table under `heading`, by its features cell (the chosen-per-fold row under "chosen")."""
    rows = table(report, heading)[1:]
    return {("chosen" if row[1].startswith("chosen") else row[1]): row for row in rows}


@pytest.mark.slow  # one export, two feature sets, four evaluations, then two more runs (26 s here, a minute at load)
def test_a_confirmatory_report_tests_the_levers_on_the_confirmation_rows_only(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    reproduce(load_study(write_study(tmp_path, CONFIRM, "confirm")), out, quiet_console())
    results = pd.read_csv(out / "results.csv")
    partitions = [(seed, fold) for seed in (0, 1) for fold in ("r0f0", "r0f1")]
    assert sorted(zip(results["seed"], results["fold"])) == sorted(partitions * 2)  # two candidates on each
    report = (out / "report.md").read_text()
    assert "Exploratory" not in report and "- Confirmation: the candidates were chosen" in report
    development = lever_rows(report, "## Levers · synthetic (development: chosen and reported on these folds)")
    confirmation = lever_rows(report, "## Levers · synthetic (confirmation: fresh 5x2 partitions, seed 1)")
    for rows, seed in ((development, 0), (confirmation, 1)):  # each table from its own partition's rows only
        mine = results[results["seed"] == seed]
        for features in ("efficientnet-lite0@32", "efficientnet-lite0@32 [power]"):
            auc = mine.loc[mine["backbone"] == features, "auc"].mean()
            assert rows[f"`{features}`"][2].startswith(f"{100 * auc:.1f} ± ")
        picks = mine.sort_values(["fold", "validation_auc"], ascending=[True, False]).drop_duplicates("fold")
        assert rows["chosen"][2].startswith(f"{100 * picks['auc'].mean():.1f} ± ")
    started = json.loads((out / "ledger.json").read_text())["confirmation"]
    assert sorted(started["candidates"]) == ["skin/mela-vs-ben/efficientnet-lite0@32",
                                             "skin/mela-vs-ben/efficientnet-lite0@32 [power]"]
    assert re.fullmatch(r"[0-9a-f]{64}", started["fingerprint"])

    # a candidate added once confirmation started is flagged there, and the confirmatory pick ignores it
    added = CONFIRM.replace('"efficientnet-lite0@32 [power]"]', '"efficientnet-lite0@32 [power]", '
                                                                '"efficientnet-lite0@32 [tta dihedral]"]')
    reproduce(load_study(write_study(tmp_path, added, "confirm")), out, quiet_console())
    assert json.loads((out / "ledger.json").read_text())["confirmation"] == started
    report = (out / "report.md").read_text()
    confirmation = lever_rows(report, "## Levers · synthetic (confirmation")
    assert confirmation["`efficientnet-lite0@32 [tta dihedral]` (added after confirmation started: not "
                        "confirmatory)"]
    assert "tta" not in confirmation["chosen"][1]
    assert "`efficientnet-lite0@32 [tta dihedral]`" in lever_rows(report, "## Levers · synthetic (development")

    # without [confirm], one line above the tables says the claims are exploratory
    plain = write_study(tmp_path, CONFIRM.replace("[confirm]\nseeds = [1]\n", ""), "plain")
    reproduce(load_study(plain), out, quiet_console())
    report = (out / "report.md").read_text()
    assert "**Exploratory.** This study names no confirmation data" in report
    assert report.index("**Exploratory.**") < report.index("## Levers · synthetic: each configuration")
    assert "(confirmation" not in report and "(development" not in report


@pytest.mark.slow  # one export, two datasets' sets, four evaluations (21 s here, a minute at load)
def test_an_external_pair_confirms_the_candidates_on_all_of_the_dataset(tmp_path, monkeypatch):
    from bench import plugins

    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "other"  # another draw of synthetic lesions, as a user's own folder of images
    for row in plugins.get_dataset("synthetic").manifest(None, n="60", size="32", seed="1").itertuples():
        (folder / row.diagnosis).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, folder / row.diagnosis / Path(row.path).name)
    text = CONFIRM.replace("seeds = [1]", 'external = [{ train = "other", dataset = "skin" }]')
    text = text.replace("[confirm]", f'[datasets.other]\nadapter = "folder"\nroot = "{folder}"\n\n[confirm]')
    out = tmp_path / "out"
    reproduce(load_study(write_study(tmp_path, text, "external")), out, quiet_console())
    results = pd.read_csv(out / "results.csv")
    external = results[results["dataset"] == "folder -> synthetic"]
    assert sorted(external["backbone"]) == ["efficientnet-lite0@32", "efficientnet-lite0@32 [power]"]
    assert (external["fold"] == "all").all() and (external["split"] == "external").all()
    report = (out / "report.md").read_text()
    rows = lever_rows(report, "## Levers · folder -> synthetic (confirmation: SVM trained on all of folder, scored "
                              "on all of synthetic)")
    for features in ("efficientnet-lite0@32", "efficientnet-lite0@32 [power]"):
        auc = external.loc[external["backbone"] == features, "auc"].iloc[0]
        assert rows[f"`{features}`"][2].startswith(f"{100 * auc:.1f}")
    order = external["backbone"].map({"efficientnet-lite0@32": 0, "efficientnet-lite0@32 [power]": 1})
    pick = external.assign(order=order).sort_values(["validation_auc", "order"], ascending=[False, True]).iloc[0]
    assert rows["chosen"][2].startswith(f"{100 * pick['auc']:.1f}")  # by validation AUC, first listed on a tie
    assert "## Levers · synthetic (development" in report and "Exploratory" not in report
    assert "(roc-folder-to-synthetic-mela-vs-ben.png)" in report  # the pair's ROC figure, beside the dataset's
    assert (out / "roc-folder-to-synthetic-mela-vs-ben.png").stat().st_size > 0


def test_a_recipes_departures_are_named_where_its_name_would_hide_them():
    """The command line's recipe line and a report's setup line say what a recipe's name alone would hide:
    bfloat16 on the CPU, a diagnosis target."""
    from bench.cli.train import _trains
    from bench.train.recipes import get_recipe

    assert get_recipe("cpu224").departures() == []
    assert get_recipe("cpu224-bf16").departures() == ["in bfloat16 on the CPU"]
    both = get_recipe("cpu224-bf16").with_overrides(target="diagnosis")
    assert both.departures() == ["in bfloat16 on the CPU", "learning every diagnosis"]
    assert _trains(both).endswith("head-only epoch(s); in bfloat16 on the CPU; learning every diagnosis")
