"""Training the top from cached trunk activations: the cut, the stored view pool, and that a cached step and the
trained network are the ordinary loop's and the exported model's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench import paths, plugins
from bench.train import loop, trunk
from bench.backbone import read_checkpoint
from bench.cli import app
from bench.errors import BenchError
from bench.extract.export import export_onnx
from bench.extract.pipeline import Extraction
from bench.hookspecs import hookimpl
from bench.images import load_image
from bench.context import Context, Registry
from bench.train.jobs import finetune_job
from bench.work import DatasetRef, ExtractTrunk, FineTune
from bench.paths import finetuned_checkpoint
from bench.testing import check_backbone
from bench.train.top import top_trainer
from featurestore import FeatureStore
from tests.test_train import OPTIONS, RECIPE, SYNTHETIC, TINY, _load_start

TINY_CUT = dataclasses.replace(TINY, name="tiny-cut", load_initial=_load_start,  # the same start every time
                               chain=lambda net: list(net.named_children()))
TOP = RECIPE.with_overrides(train_last=2, views=3)  # BatchNorm(16) and the last Linear train; the trunk ends at conv 2


class CutPlugin:
    @staticmethod
    @hookimpl
    def bench_register_backbones(register) -> None:
        register(TINY_CUT)


@pytest.fixture
def tiny_cut():
    pm = plugins.plugin_manager()
    pm.register(CutPlugin, name="test-trunk-tiny")
    yield
    pm.unregister(name="test-trunk-tiny")


def _pass(store: str, recipe=TOP, seed: int = 0) -> Extraction:
    unit = ExtractTrunk.of(TINY_CUT.name, DatasetRef.of("synthetic", options=SYNTHETIC), recipe, seed)
    job = trunk.prepare(unit, Context(paths.home(), store, Registry({TINY_CUT.name: TINY_CUT})))
    try:
        job.run()
    finally:
        job.writer.release()
    return job


def test_the_cut_leaves_the_trained_layers_in_the_top_and_the_stateless_ones_with_them():
    net = TINY_CUT.build()
    cut = trunk.split(TINY_CUT, net, 2)
    assert cut.cut == "4" and len(cut.trunk) == 4  # conv, BN, ReLU, conv | BN(16), ReLU, pool, flatten, Linear
    vggm = plugins.get_backbone("vgg-m")
    fc7 = trunk.split(vggm, vggm.build(), 1)
    assert [type(m).__name__ for m in fc7.top][:3] == ["ReLU", "Dropout", "Linear"]  # drop6 trains as in the loop
    with pytest.raises(BenchError, match="no frozen trunk"):
        trunk.split(TINY_CUT, net, 5)
    with pytest.raises(BenchError, match="declares no cut points"):
        trunk.split(TINY, net, 2)


def test_check_backbone_refuses_a_chain_that_is_not_the_forward():
    def without_relu(net):
        children = list(net.named_children())
        return children[:2] + children[3:]

    with pytest.raises(AssertionError, match="top\\(trunk\\(x\\)\\) != net\\(x\\) at the cut"):
        check_backbone(dataclasses.replace(TINY_CUT, chain=without_relu), onnx=False)
    check_backbone(TINY_CUT, onnx=False)


def test_the_pool_holds_the_trunk_of_each_view_and_a_rerun_computes_nothing(tmp_path):
    store = str(tmp_path / "store")
    job = _pass(store)
    stored = FeatureStore(store).read("synthetic", "tiny-cut", job.key)
    assert stored.features.dtype == np.float16 and job.key.startswith("trunk-4-32px-3v-s0-")
    cut = trunk.split(TINY_CUT, TINY_CUT.create(), 2)
    pool = trunk.ViewPool.drawn(len(job.manifest), 3, 0)
    picked = np.array([0, 7, len(job.manifest) - 1])
    images = np.stack([load_image(p, 32) for p in job.manifest["path"].iloc[picked]])
    x = TINY_CUT.preprocessing.normalise(images)
    with torch.no_grad():
        expected = np.stack([cut.trunk(torch.from_numpy(v)).numpy() for v in pool.view_batches(x, picked)], 1)
    got = stored.features[picked].reshape(expected.shape).astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    assert not np.allclose(got[:, 1], got[:, 2], atol=1e-2)  # augmented views differ
    assert not _pass(store).todo  # the set is complete: nothing computed again
    assert _pass(store, seed=1).key != job.key  # another pool, another set


def test_one_step_from_the_cache_is_one_step_of_the_loop_on_the_same_views(tiny_cut, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    recipe = TOP.with_overrides(views=2)  # view 0 as it is, view 1 augmented: an augmented image gets view 1
    manifest = _pass(store, recipe).manifest
    unit = FineTune(TINY_CUT.name, DatasetRef.of("synthetic", options=SYNTHETIC), "mela-vs-ben", "5x2", "r0f0", recipe)
    job = finetune_job(unit, Context.for_user(store))
    batch, labels, every = np.arange(8), torch.tensor(job.data.labels[:8]), torch.ones(8, dtype=torch.bool)
    # the loop draws its augmentation afresh: here it draws the pool's view 1 of the same images
    rows = manifest.reset_index().set_index("image_id").loc[job.data.image_ids[batch], "index"].to_numpy()
    draws = torch.tensor(trunk.ViewPool.drawn(len(manifest), 2, 0).draws[rows, 0])
    monkeypatch.setattr(loop, "augment", lambda x, generator: loop.transform(x, draws))

    def update(setup, augmented: torch.Tensor) -> dict[str, torch.Tensor]:
        """The change one step makes to the net and the head, from the job's seeded start."""
        torch.manual_seed(job.seed)
        trainer, data = setup(job, torch.device("cpu"), torch.Generator().manual_seed(0))
        state = lambda: {**{f"net.{k}": v.clone() for k, v in trainer.net.state_dict().items()},
                         **{f"head.{k}": v.clone() for k, v in trainer.model[-1].state_dict().items()}}
        before = state()
        trainer.train_mode(head_only=False)
        trainer.step(data[batch], labels, augmented)
        return {k: v - before[k] for k, v in state().items() if v.is_floating_point()}

    cached, ordinary = update(top_trainer, every), update(loop.whole_network, every)
    trained = {k for k, v in ordinary.items() if v.abs().max() > 0}
    assert trained == {k for k, v in cached.items() if v.abs().max() > 0}
    assert {k.split(".")[1] for k in trained} == {"4", "8", "weight", "bias"}  # BatchNorm(16), Linear, the head
    for key in trained:  # float16 activations: the same step to a few parts in a thousand
        torch.testing.assert_close(cached[key], ordinary[key], rtol=1e-2, atol=1e-2 * float(ordinary[key].abs().max()))
    as_they_are = update(top_trainer, ~every)  # view 0: another step, so the views above were the ones compared
    assert not torch.allclose(as_they_are["head.weight"], ordinary["head.weight"], rtol=0.1)


def test_bench_train_with_a_view_pool_saves_the_whole_network_whose_onnx_is_the_top_on_view_0(tiny_cut, tmp_path):
    store = str(tmp_path / "store")
    args = ["train", "--backbone", "tiny-cut", "--dataset", "synthetic", "--protocol", "mela-vs-ben", "--fold",
            "r0f0", "--recipe", "demo", "--image-size", "32", "--epochs", "2", "--views", "3", "--store", store,
            *OPTIONS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pool of 3 cached views" in result.output
    out = finetuned_checkpoint(paths.home(), "synthetic", "tiny-cut", "mela-vs-ben", "r0f0")
    saved = read_checkpoint(out)
    assert set(saved["state_dict"]) == set(TINY_CUT.build().state_dict()) and saved["meta"]["recipe"]["views"] == 3

    net, start = TINY_CUT.create(out), TINY_CUT.create()
    recipe = saved["meta"]["recipe"]
    cut = trunk.split(TINY_CUT, net, recipe["train_last"])
    key, _ = trunk.trunk_key(cut, TINY_CUT.preprocessing.with_size(32), 3, 0)
    stored = FeatureStore(store).read("synthetic", "tiny-cut", key)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, start.state_dict()[k])}
    assert cut.cut == "1" and changed  # demo trains the last 4 layers: the trunk is the first conv, as it was
    assert not any(k.startswith("0.") for k in changed)

    extract = ["extract", "--backbone", "tiny-cut", "--dataset", "synthetic", "--protocol", "mela-vs-ben", "--fold",
               "r0f0", *OPTIONS]
    result = CliRunner().invoke(app, [*extract, "--store", store, "--from-trunk"])
    assert result.exit_code == 0, result.output
    cached = FeatureStore(store).read("synthetic", "tiny-cut", "ft-mela-vs-ben-r0f0")
    said, top_model = cached.attrs["computed_from"].rsplit(" (", 1)
    assert said == f"trunk set {key}: the top on view 0"  # run by onnxruntime, from the top's ONNX in the cache
    assert (paths.onnx_dir(paths.home()) / top_model.rstrip(")")).is_file()
    with torch.no_grad():  # the top on view 0, as the set holds it
        view0 = stored.features[:, : stored.features.shape[1] // 3].astype(np.float32)
        tops = cut.top.eval()(torch.from_numpy(view0).reshape(-1, *trunk.activation_shape(cut.trunk, 32))).numpy()
    np.testing.assert_allclose(cached.features, tops, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(tops).max()))

    result = CliRunner().invoke(app, [*extract, "--store", str(tmp_path / "onnx-store")])
    assert result.exit_code == 0, result.output
    onnx = FeatureStore(tmp_path / "onnx-store").read("synthetic", "tiny-cut", "ft-mela-vs-ben-r0f0")
    assert onnx.attrs["model_sha256"] == cached.attrs["model_sha256"] == export_onnx(TINY_CUT, weights=out).sha256
    np.testing.assert_allclose(cached.features, onnx.features, atol=1e-4 * max(1.0, np.abs(onnx.features).max()))


def test_a_view_pool_goes_with_a_top_and_leaves_earlier_fingerprints_alone():
    assert "views" not in RECIPE.to_dict() and TOP.to_dict()["views"] == 3
    with pytest.raises(BenchError, match="--views needs a recipe that trains only the top"):
        dataclasses.replace(RECIPE, train_last=None).with_overrides(views=4)
    with pytest.raises(BenchError, match="--views must be at least 2"):
        TOP.with_overrides(views=1)
    assert TOP.starting_from(random_init=True).views is None  # from scratch: the whole network, no cache


def test_perf_train_times_the_top_from_the_cache_and_the_trunk_pass():
    from bench.perf import train as perf_train

    recipe = TOP.with_overrides(batch_size=4)
    figures = perf_train.measure(TINY_CUT.build(), 12, TINY_CUT.preprocessing, recipe, steps=4, backbone=TINY_CUT)
    assert figures["top_loop_ips"] > 0 and figures["trunk_pass_ips"] > 0 and figures["views"] == 3


VIEWS_STUDY = """
description = "a tiny study whose fine-tunes train the top from cached trunk activations"
recipe = "demo"
seed = 0
overrides = { epochs = 1, image_size = 32, batch_size = 8, views = 3 }

[datasets.skin]
adapter = "synthetic"
options = { n = 60, size = 48 }

[[evaluate]]
dataset = "skin"
split = "5x2"
folds = ["r0f0", "r0f1"]
protocols = ["mela-vs-ben", "mal-vs-ben"]
finetuned = ["efficientnet-lite0"]
"""


@pytest.mark.slow
def test_a_study_with_a_view_pool_runs_one_trunk_pass_for_every_fine_tune_and_reruns_nothing(tmp_path, monkeypatch):
    from bench.study.reproduce import reproduce
    from bench.study.runner import ran_stages
    from bench.study.schema import load_study
    from bench.study.workspace import Workspace
    from tests.test_reproduce import quiet_console, write_study

    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "user-home"))
    study, out = load_study(write_study(tmp_path, VIEWS_STUDY, "views")), tmp_path / "out"
    assert reproduce(study, out, quiet_console())["ran"] == 1 + 4 + 4 + 2 + 1  # trunk, fine-tunes, sets, SVMs, report
    started = ran_stages(out / "log.jsonl")[0]
    assert [s for s in started if s.startswith("trunk")] == ["trunk skin/efficientnet-lite0/last4-32px-3v-s0"]
    assert started.index("trunk skin/efficientnet-lite0/last4-32px-3v-s0") < min(
        started.index(s) for s in started if s.startswith("finetune"))
    store = FeatureStore(Workspace(out).store)
    tuned = {f"ft-{p}-{f}" for p in ("mela-vs-ben", "mal-vs-ben") for f in ("r0f0", "r0f1")}
    assert {i.key for i in store.list() if i.key.startswith("ft-")} == tuned
    cached = store.read("synthetic", "efficientnet-lite0", "ft-mela-vs-ben-r0f0")
    assert cached.attrs["computed_from"].startswith("trunk set trunk-")  # the top on view 0: no image read again
    assert reproduce(study, out, quiet_console()) == {"skipped": 12}


def test_a_study_plans_the_trunk_pass_before_the_fine_tunes_and_trains_random_starts_at_their_own_size(tmp_path):
    from bench.study.plan import plan
    from bench.study.schema import load_study
    from bench.study.workspace import Workspace
    from tests.test_reproduce import write_study

    text = VIEWS_STUDY.replace('finetuned = ["efficientnet-lite0"]', 'finetuned = ["efficientnet-lite0", "random"]')
    text = text.replace("[datasets.skin]", 'from_scratch = { image_size = 48, epochs = 2 }\n\n[datasets.skin]')
    text += '\n[backbones.random]\nlike = "efficientnet-lite0"\nweights = "random"\n'
    study = load_study(write_study(tmp_path, text, "views"))
    units = {u.key: u for u in plan(study, {0: ["r0f0", "r0f1"]}, Workspace(tmp_path).context(study))}
    trunk = "trunk skin/efficientnet-lite0/last4-32px-3v-s0"
    assert [k for k in units if k.startswith("trunk")] == [trunk]
    pretrained = units["finetune skin/efficientnet-lite0/ft-mela-vs-ben-r0f1"]
    scratch = units["finetune skin/random/ft-mela-vs-ben-r0f1"]
    assert pretrained.deps == (trunk,) and pretrained.recipe.views == 3
    assert units["extract skin/efficientnet-lite0/ft-mela-vs-ben-r0f1"].from_trunk
    assert scratch.deps == () and scratch.recipe.views is None and scratch.recipe.train_last is None
    assert (scratch.recipe.image_size, scratch.recipe.epochs) == (48, 2)  # from_scratch, the whole network
    assert not units["extract skin/random/ft-mela-vs-ben-r0f1"].from_trunk
    with pytest.raises(BenchError, match="from_scratch.epoch"):
        load_study(write_study(tmp_path, text.replace("epochs = 2 }", "epoch = 2 }"), "views"))


def test_bench_extract_trunk_builds_the_unit_and_refuses_a_recipe_without_a_pool(tiny_cut, tmp_path):
    args = ["extract", "--backbone", "tiny-cut", "--dataset", "synthetic", "--store", str(tmp_path), *OPTIONS]
    result = CliRunner().invoke(app, [*args, "--trunk", "demo"])
    assert "recipe demo trains tiny-cut without a view pool" in str(result.exception)
    result = CliRunner().invoke(app, [*args, "--trunk", "cpu224", "--fold", "r0f0"])
    assert "drop --protocol, --fold" in str(result.exception)
