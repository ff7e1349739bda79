"""The training loop on synthetic data with a tiny network: what it reads, how it balances, what it keeps."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bench import paths, plugins
from bench.backbone import Backbone, Preprocessing, SourceStage, read_checkpoint
from bench.cli import app
from bench.context import Context, Registry
from bench.errors import BenchError
from bench.extract.export import export_onnx
from bench.extract.pipeline import prepare
from bench.evaluate.features import reader
from bench.overlap import SOURCE_OVERLAP
from bench.hookspecs import hookimpl
from bench.train.jobs import finetune_job, source_stage_job
from bench.train.recipes import get_recipe, recipes
from bench.overlap import TRAINED_ON, Overlap
from bench.train import loop
from bench.work import DatasetRef, Extract, FineTune, TrainSource
from featurestore import FeatureStore
from protocols.errors import ProtocolError
from protocols.splits import make_folds

SYNTHETIC = {"n": "120", "size": "32"}
OPTIONS = [arg for k, v in SYNTHETIC.items() for arg in ("-o", f"{k}={v}")]
RECIPE = get_recipe("demo").with_overrides(image_size=32, batch_size=8, epochs=2)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12))


def _load_start(net: nn.Module) -> None:
    torch.manual_seed(123)  # a fixed "pretrained" start: the same weights however the RNG stands
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)


TINY = Backbone("tiny", "tiny CNN", Preprocessing(size=32), "fc", 12, "random", build=tiny_net)
TINY_START = dataclasses.replace(TINY, name="tiny-start", load_initial=_load_start)
TINY_SOURCE = dataclasses.replace(TINY, name="tiny-source", source_stages=(
    SourceStage(dataset="synthetic", task="4 diagnoses", start="tiny-start", output="tiny-source.pt"),))


def _missing(net: nn.Module) -> None:
    raise BenchError("tiny-imagenet.pt not found: import it first")


TINY_DOUBLE = dataclasses.replace(TINY, name="tiny-double", source_stages=(
    SourceStage(dataset="synthetic", task="4 diagnoses", start="tiny-missing", output="tiny-double.pt"),))
TINY_RANDOM = dataclasses.replace(TINY, name="tiny-random", random_init=True)
TINY_FROM_RANDOM = dataclasses.replace(TINY, name="tiny-from-random", source_stages=(
    SourceStage(dataset="synthetic", task="4 diagnoses", start="tiny-random", output="tiny-from-random.pt"),))


TINIES = {b.name: b for b in (TINY, TINY_START, TINY_SOURCE, TINY_DOUBLE, TINY_RANDOM, TINY_FROM_RANDOM,
                               dataclasses.replace(TINY, name="tiny-missing", load_initial=_missing))}


class TinyPlugin:
    @staticmethod
    @hookimpl
    def bench_register_backbones(register) -> None:
        for backbone in TINIES.values():
            register(backbone)


def _ctx(store: Path | None = None) -> Context:
    """The tiny backbones passed in the context, as a study passes its own: nothing is registered."""
    return Context(paths.home(), str(store or "bench-store"), Registry(TINIES))


def _finetune_job(backbone: Backbone, recipe=RECIPE, seed: int = 0) -> loop.TrainingJob:
    unit = FineTune(backbone.name, DatasetRef.of("synthetic", options=SYNTHETIC), "mela-vs-ben", "5x2", "r0f0",
                    recipe, seed)
    return finetune_job(unit, _ctx())


def _source_job(backbone: Backbone, recipe=RECIPE, dataset: str = "synthetic", limit: int | None = None):
    ctx = _ctx()
    unit = TrainSource.of(ctx, backbone.name, DatasetRef.of(dataset, options=SYNTHETIC, limit=limit), recipe)
    return source_stage_job(unit, ctx)


def _extraction(backbone: str, dataset: str, store: Path):
    return prepare(Extract(backbone, DatasetRef.of(dataset, options=SYNTHETIC)), _ctx(store))


@pytest.fixture
def tiny_plugin():
    pm = plugins.plugin_manager()
    pm.register(TinyPlugin, name="test-train-tiny")
    yield
    pm.unregister(name="test-train-tiny")


def _job(seed: int = 0, recipe=RECIPE, **changes) -> loop.TrainingJob:
    return dataclasses.replace(_finetune_job(TINY, recipe, seed), **changes)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_reads_only_the_training_part_of_its_fold(monkeypatch):
    read: list[str] = []
    real_load = Preprocessing.load
    monkeypatch.setattr(Preprocessing, "load", lambda self, path: read.append(Path(path).stem) or real_load(self, path))
    job = _job()
    loop.fit(job)

    manifest = plugins.get_dataset("synthetic").manifest(None, **SYNTHETIC)
    train_ids, test_ids = make_folds(manifest, "5x2")["r0f0"]
    carcinomas = set(manifest.loc[manifest["diagnosis"] == "basal_cell_carcinoma", "image_id"])
    assert read and set(read) <= set(train_ids) - carcinomas  # mela-vs-ben drops carcinomas
    assert not set(read) & set(test_ids)
    out = paths.finetuned_checkpoint(paths.home(), "synthetic", "tiny", "mela-vs-ben", "r0f0")
    saved = read_checkpoint(out)
    assert saved["meta"]["fold"] == "r0f0" and saved["meta"]["classes"] == ["benign", "melanoma"]
    assert saved["preprocessing"]["size"] == 32 and not job.run_dir.exists()
    assert set(saved["state_dict"]) == set(tiny_net().state_dict())  # the feature net only: the head is dropped


def test_a_diagnosis_target_fine_tunes_on_the_same_images_with_their_diagnoses():
    """`target = "diagnosis"` changes what the images are told apart by, never which images train: the design's
    training part (mela-vs-ben: no carcinoma), each labelled with its own diagnosis; the run is another run."""
    by_design = _job()
    job = _job(recipe=RECIPE.with_overrides(target="diagnosis"))
    manifest = plugins.get_dataset("synthetic").manifest(None, **SYNTHETIC).set_index("image_id")
    assert list(job.data.image_ids) == list(by_design.data.image_ids)
    diagnoses = manifest.loc[job.data.image_ids, "diagnosis"].to_numpy()
    assert len(job.data.classes) > 2 and "basal_cell_carcinoma" not in job.data.classes
    assert (np.array(job.data.classes)[job.data.labels] == diagnoses).all()
    assert job.run_dir != by_design.run_dir
    loop.fit(job)
    assert read_checkpoint(job.out)["meta"]["classes"] == list(job.data.classes)


def test_augment_all_flags_every_image_and_keeps_the_balance():
    labels = np.array([0] * 30 + [1] * 10)
    minority = loop.balanced_epoch(labels, torch.Generator().manual_seed(0))
    every = loop.balanced_epoch(labels, torch.Generator().manual_seed(0), augment_all=True)
    np.testing.assert_array_equal(every[0], minority[0])  # the same images in the same order
    assert every[1].all() and not minority[1].all()


def test_balanced_epoch_augments_only_minority_copies():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 4)
    order, augmented = loop.balanced_epoch(labels, torch.Generator().manual_seed(0))
    assert np.bincount(labels[order]).tolist() == [30, 30, 30]
    assert not augmented[labels[order] == 0].any()  # the majority is shown as it is
    originals = order[~augmented]
    assert sorted(originals) == list(range(len(labels)))  # every image once un-augmented
    assert np.bincount(labels[order[augmented]], minlength=3).tolist() == [0, 20, 26]


def test_trainer_augments_exactly_the_flagged_images(monkeypatch):
    seen: list[torch.Tensor] = []
    real = loop.augment
    monkeypatch.setattr(loop, "augment", lambda x, g: seen.append(x.clone()) or real(x, g))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([True, False, False, True, False, False])
    trainer = loop.Trainer(nn.Sequential(tiny_net(), nn.Linear(12, 2)), RECIPE, TINY.preprocessing,
                            torch.Generator().manual_seed(0))
    trainer.step(images, torch.tensor([1, 0, 0, 1, 0, 0]), mask)
    assert len(seen) == 1 and torch.equal(seen[0], images[mask].float())


def test_augmentation_varies_per_image_and_adds_no_borders():
    image = torch.rand(1, 3, 32, 32).mul(255).expand(4, 3, 32, 32).contiguous()
    out = loop.augment(image, torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    assert not torch.allclose(out[0], out[1])
    flat = torch.full((2, 3, 32, 32), 120.0)
    # reflection padding: rotating a flat image leaves it flat; black corners would only mark minority images
    assert torch.allclose(loop.augment(flat, torch.Generator().manual_seed(1)), flat, atol=1e-3)


def test_the_epoch_with_the_lowest_validation_loss_is_kept(monkeypatch):
    losses, states = iter([0.9, 0.5, 0.7]), []

    def forced(model, *args):
        states.append({k: v.clone() for k, v in model[0].state_dict().items()})
        return next(losses)

    monkeypatch.setattr(loop, "validation_loss", forced)
    job = _job(recipe=RECIPE.with_overrides(epochs=3))
    state = loop.fit(job)
    saved = read_checkpoint(job.out)
    assert state.best_epoch == 2 and saved["meta"]["best_epoch"] == 2 and saved["meta"]["epochs_run"] == 3
    assert _same(saved["state_dict"], states[1]) and not _same(saved["state_dict"], states[2])


def test_with_keep_auc_the_epoch_with_the_best_validation_auc_is_kept(monkeypatch):
    """Validation loss and AUC disagree here (the loss is lowest at epoch 1, the AUC highest at epoch 3): the
    recipe's `keep = "auc"` keeps epoch 3, whatever the loss says."""
    losses, aucs, states = iter([0.4, 0.6, 0.9, 0.8]), iter([0.70, 0.75, 0.90, 0.85]), []

    def forced_loss(model, *args):
        states.append({k: v.clone() for k, v in model[0].state_dict().items()})
        return next(losses)

    monkeypatch.setattr(loop, "validation_loss", forced_loss)
    monkeypatch.setattr(loop, "validation_auc", lambda *args: next(aucs))
    job = _job(recipe=RECIPE.with_overrides(epochs=4, keep="auc"))
    state = loop.fit(job)
    saved = read_checkpoint(job.out)
    assert state.best_epoch == 3 and saved["meta"]["best_epoch"] == 3
    assert saved["meta"]["val_auc"] == 0.90 and saved["meta"]["val_loss"] == 0.9  # the kept epoch's, both
    assert [h["val_auc"] for h in saved["meta"]["history"]] == [0.70, 0.75, 0.90, 0.85]
    assert _same(saved["state_dict"], states[2]) and not _same(saved["state_dict"], states[3])
    assert saved["meta"]["recipe"]["keep"] == "auc"


def test_the_default_keep_never_computes_the_validation_auc(monkeypatch):
    def refuse(*args):
        raise AssertionError("validation AUC computed under keep = 'loss'")

    monkeypatch.setattr(loop, "validation_auc", refuse)
    job = _job()
    state = loop.fit(job)
    assert "val_auc" not in state.history[0] and "val_auc" not in read_checkpoint(job.out)["meta"]


def test_the_validation_auc_is_the_classifiers_own():
    from sklearn.metrics import roc_auc_score

    amp = contextlib.nullcontext
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 2, generator=generator)
    labels = torch.tensor([0, 1] * 20)
    auc = loop.validation_auc(nn.Identity(), lambda x: x, logits, labels, 8, amp)
    assert auc == pytest.approx(roc_auc_score(labels.numpy(), torch.softmax(logits, 1)[:, 1].numpy()))
    three = torch.randn(60, 3, generator=generator)
    labels3 = torch.tensor([0, 1, 2] * 20)
    macro = roc_auc_score(labels3.numpy(), torch.softmax(three, 1).numpy(), multi_class="ovr", average="macro")
    assert loop.validation_auc(nn.Identity(), lambda x: x, three, labels3, 7, amp) == pytest.approx(macro)
    perfect = torch.stack([-labels.float(), labels.float()], 1)
    assert loop.validation_auc(nn.Identity(), lambda x: x, perfect, labels, 8, amp) == 1.0
    with pytest.raises(BenchError, match="every class"):
        loop.validation_auc(nn.Identity(), lambda x: x, three, torch.tensor([0, 1] * 30), 8, amp)


def test_an_interrupted_run_resumes_to_the_same_weights(monkeypatch, tmp_path):
    reference = _job(out=tmp_path / "uninterrupted.pt", run_dir=tmp_path / "run-a")
    loop.fit(reference)

    real, calls = loop.validation_loss, []

    def interrupt_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    job = _job(out=tmp_path / "resumed.pt", run_dir=tmp_path / "run-b")
    monkeypatch.setattr(loop, "validation_loss", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(job)
    assert read_checkpoint(job.run_dir / "last.pt")["state"]["epoch"] == 1 and not job.out.exists()
    monkeypatch.setattr(loop, "validation_loss", real)
    state = loop.fit(job)
    assert [h["epoch"] for h in state.history] == [1, 2]
    assert _same(_weights(job.out), _weights(reference.out))


@pytest.mark.slow
def test_same_seed_same_weights_on_cpu(tmp_path):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        job = _job(seed=seed, out=tmp_path / f"{name}.pt", run_dir=tmp_path / f"run-{name}")
        loop.fit(job)
        outs.append(_weights(job.out))
    assert _same(outs[0], outs[1])
    assert not _same(outs[0], outs[2])


def test_train_last_freezes_the_early_layers(tmp_path):
    job = _job(recipe=RECIPE.with_overrides(train_last=2), out=tmp_path / "top.pt", run_dir=tmp_path / "run")
    loop.fit(job)
    torch.manual_seed(job.seed)
    start, trained = tiny_net().state_dict(), _weights(job.out)  # the start is seeded exactly as fit seeds it
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    # the last two parameterised layers are BatchNorm2d(16) and Linear; everything before, running stats included,
    # stays as it started
    assert changed and changed <= {"4.weight", "4.bias", "4.running_mean", "4.running_var", "4.num_batches_tracked",
                                   "8.weight", "8.bias"}
    assert {"8.weight", "4.weight"} <= changed


@pytest.mark.slow
def test_exported_onnx_matches_the_fine_tuned_network():
    import onnxruntime as ort

    job = _job()
    loop.fit(job)
    exported = export_onnx(TINY, weights=job.out)
    assert exported.preprocessing == job.preprocessing  # the size the network was trained at travels with it
    net = TINY.create(job.out)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = exported.preprocessing.normalise(images)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_head_epochs_leave_the_feature_net_as_it_started(tmp_path):
    job = _job(recipe=RECIPE.with_overrides(head_epochs=1), out=tmp_path / "lp.pt", run_dir=tmp_path / "run")
    history = []
    real = loop.Trainer.epoch

    def record(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        history.append({k: v.clone() for k, v in self.model[0].state_dict().items()})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop.Trainer, "epoch", record)
        loop.fit(job)
    torch.manual_seed(job.seed)
    start = tiny_net().state_dict()
    assert _same(history[0], start)  # epoch 1 trained the head only, BatchNorm statistics included
    assert not _same(history[1], start)


def test_network_input_matches_the_declared_preprocessing():
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    for pre in (Preprocessing(size=16), Preprocessing(size=16, mean=(103.9, 116.8, 123.7), std=(1.0, 1.0, 1.0),
                                                      channel_order="BGR", value_range=255.0)):
        ours = loop.to_input(torch.from_numpy(images).permute(0, 3, 1, 2).float(), pre)
        np.testing.assert_allclose(ours.numpy(), pre.normalise(images), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_source_stage_becomes_the_backbones_initial_weights(tmp_path):
    job = _source_job(TINY_SOURCE, RECIPE.with_overrides(image_size=24))
    assert job.data.classes == ("basal_cell_carcinoma", "melanoma", "nevus", "seborrheic_keratosis")
    assert job.out == paths.weights_dir(paths.home()) / "tiny-source.pt"
    torch.manual_seed(99)
    assert _same(job.start().state_dict(), TINY_START.create().state_dict())  # starts from the stage's `start`
    loop.fit(job)
    assert read_checkpoint(job.out)["backbone"] == "tiny-source"
    # frozen extraction uses the stage's weights at the size they were trained at, not the backbone's default 32
    extraction = _extraction("tiny-source", "synthetic-fundus", tmp_path / "store")
    assert extraction.model.preprocessing.size == 24
    with pytest.raises(BenchError, match="source stage trains on synthetic"):
        _source_job(TINY_SOURCE, dataset="other")


def test_a_backbone_whose_source_is_a_dataset_is_refused_on_it(tmp_path):
    job = _source_job(TINY_SOURCE, RECIPE.with_overrides(epochs=1), limit=40)
    loop.fit(job)
    trained_on = read_checkpoint(job.out)["meta"][TRAINED_ON]  # by content: ids, digests, perceptual hashes
    assert trained_on["image_id"] == job.data.image_ids.tolist() and len(trained_on["sha256"]) == 40
    store = tmp_path / "store"
    # extraction records the pictures in common (any: not only all of D); evaluation refuses them on the test side
    job = _extraction("tiny-source", "synthetic", store)
    job.fill()
    found = Overlap.from_records(FeatureStore(store).read("synthetic", "tiny-source", "frozen").attrs[SOURCE_OVERLAP])
    assert set(trained_on["image_id"]) <= set(found.test_ids)
    with pytest.raises(BenchError, match=r"image\(s\) of synthetic are pictures tiny-source's source stage trained on"):
        reader(store, "synthetic", "tiny-source", image_ids=job.manifest["image_id"])(None)
    _extraction("tiny-source", "synthetic-fundus", store).fill()
    stored = FeatureStore(store).read("synthetic-fundus", "tiny-source", "frozen")
    assert stored.attrs[SOURCE_OVERLAP] == []  # compared by content, and no fundus picture is a skin picture


def test_missing_starting_weights_fail_before_any_image_is_read(monkeypatch):
    monkeypatch.setattr(Preprocessing, "load", lambda *args: pytest.fail("an image was decoded"))
    job = _source_job(TINY_DOUBLE)
    with pytest.raises(BenchError, match="import it first"):
        loop.fit(job)
    assert not job.out.exists()


def test_cli_train_recipes_and_perf(tiny_plugin):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--backbone", "tiny", "--dataset", "synthetic", "--protocol",
                                 "mal-vs-ben", "--fold", "r1f1", "--recipe", "demo", "--image-size", "32",
                                 "--epochs", "1", "--limit", "30", *OPTIONS])
    assert result.exit_code == 0, result.output
    saved = read_checkpoint(paths.finetuned_checkpoint(paths.home(), "synthetic", "tiny", "mal-vs-ben", "r1f1"))
    assert saved["meta"]["train_images"] == 30 and saved["meta"]["recipe"]["epochs"] == 1
    assert "bench extract --backbone tiny" in result.output

    result = runner.invoke(app, ["train", "--backbone", "tiny", "--dataset", "synthetic", "--fold", "r0f0"])
    assert isinstance(result.exception, BenchError) and "--protocol" in str(result.exception)
    result = runner.invoke(app, ["train", "--backbone", "tiny", "--dataset", "synthetic", "--protocol",
                                 "mela-vs-ben", "--fold", "r9f9", *OPTIONS])
    assert isinstance(result.exception, ProtocolError) and "its folds are r0f0" in str(result.exception)

    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and all(name in result.output for name in recipes())

    result = runner.invoke(app, ["perf", "train", "--backbone", "tiny", "--image-size", "32", "--batch-size", "4",
                                 "--steps", "2"])
    assert result.exit_code == 0 and "images/s" in result.output, result.output


def test_recipe_overrides_are_checked():
    assert get_recipe("paper").with_overrides(epochs=3, lr=None).epochs == 3
    with pytest.raises(BenchError, match="--image-size must be positive"):
        get_recipe("paper").with_overrides(image_size=0)
    cpu = get_recipe("cpu")
    assert cpu.augment == "all" and get_recipe("paper").augment == "minority"  # the paper's stays the paper's
    assert cpu.with_overrides(head_epochs=0, augment="minority").head_epochs == 0
    with pytest.raises(BenchError, match="--augment must be one of 'minority' or 'all'"):
        cpu.with_overrides(augment="sideways")
    with pytest.raises(BenchError, match="--head-epochs must be zero or more"):
        cpu.with_overrides(head_epochs=-1)
    with pytest.raises(BenchError, match="available: paper"):
        get_recipe("nope")



def test_a_bad_recipes_file_is_refused_naming_the_recipe_and_the_field(tmp_path, monkeypatch):
    from bench.train import recipes as module

    text = module.RECIPES_FILE.read_text()
    for old, new, message in [("epochs = 2", "epochs = 0", "demo.epochs: must be positive"),
                              ("epochs = 2", "epohcs = 2", "demo.epohcs: unknown key (did you mean 'epochs'?)"),
                              ("lr = 1e-3", "lr = \"fast\"", "paper.lr: must be a number")]:
        assert old in text
        bad = tmp_path / "recipes.toml"
        bad.write_text(text.replace(old, new, 1))
        monkeypatch.setattr(module, "RECIPES_FILE", bad)
        module.recipes.cache_clear()
        with pytest.raises(BenchError) as error:
            module.recipes()
        assert str(error.value).startswith(f"{bad}: {message}")
    module.recipes.cache_clear()  # the next test reads the real file again


def test_a_random_start_trains_every_layer_whatever_the_recipe_freezes():
    top_only = RECIPE.with_overrides(train_last=2)
    assert _job(recipe=top_only).recipe.train_last == 2  # pretrained: the recipe's choice stands
    assert _finetune_job(TINY_RANDOM, top_only).recipe.train_last is None
    assert _source_job(TINY_FROM_RANDOM, top_only).recipe.train_last is None
    assert plugins.get_backbone("scratch").random_init and not plugins.get_backbone("vgg-m").random_init


def test_a_field_added_later_leaves_earlier_fingerprints_alone_at_its_default():
    paper = get_recipe("paper")
    assert "augment" not in paper.to_dict()  # as fingerprinted before the field existed
    assert paper.with_overrides(augment="all").to_dict()["augment"] == "all"


def test_keep_and_cpu_precision_leave_every_recipes_fingerprint_alone_at_their_defaults():
    """`keep` and `cpu_precision` came after runs were fingerprinted: at their defaults ("loss", float32: what the
    loop always did) they are not in a recipe's fields as fingerprints see them, so no committed ledger changes."""
    assert all("keep" not in r.to_dict() and r.keep == "loss" for r in recipes().values())
    assert all("cpu_precision" not in r.to_dict() for r in recipes().values() if r.cpu_precision == "float32")
    assert all("target" not in r.to_dict() and r.target == "design" for r in recipes().values())
    assert get_recipe("cpu224").to_dict() == {
        "name": "cpu224", "description": "Lite0's last block + head at 224 px from 4 cached views an image, on a "
        "2-core CPU (lab notes)", "epochs": 5, "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4, "image_size": 224,
        "batch_size": 32, "train_last": 8, "head_epochs": 1, "augment": "all", "views": 4}
    assert get_recipe("paper").to_dict() == {
        "name": "paper", "description": "the paper's (Menegola et al. 2017, section 2), momentum as printed",
        "epochs": 60, "lr": 1e-3, "momentum": 0.1, "weight_decay": 5e-3, "image_size": 224, "batch_size": 32,
        "train_last": None, "head_epochs": 0}
    assert get_recipe("cpu224").with_overrides(keep="auc").to_dict()["keep"] == "auc"
    with pytest.raises(BenchError, match="--keep"):
        get_recipe("cpu224").with_overrides(keep="accuracy")
    assert get_recipe("cpu224").with_overrides(cpu_precision="bfloat16").to_dict()["cpu_precision"] == "bfloat16"
    with pytest.raises(BenchError, match="--cpu-precision"):
        get_recipe("cpu224").with_overrides(cpu_precision="float16")


@pytest.mark.parametrize("precision, computes_in", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_cpu_precision_sets_the_arithmetic_of_a_cpu_run_and_never_the_weights(precision, computes_in):
    """A bfloat16 recipe autocasts the network's layers on the CPU (the step, and the validation loss that keeps the
    epoch, alike); what is optimised and saved stays float32."""
    seen: set[torch.dtype] = set()
    plain = _job(recipe=RECIPE.with_overrides(cpu_precision=precision))

    def start() -> nn.Module:
        net = plain.start()
        for layer in net.modules():
            if isinstance(layer, nn.Conv2d):
                layer.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
        return net

    job = dataclasses.replace(plain, start=start)
    loop.fit(job, torch.device("cpu"))
    assert seen == {computes_in}
    assert {v.dtype for v in _weights(job.out).values() if v.is_floating_point()} == {torch.float32}


def test_a_fine_tune_made_with_another_seed_is_refused_end_to_end(tiny_plugin, tmp_path):
    """seed 1's r0f0 is another partition: its model trained on images that seed 0's r0f0 tests on."""
    runner = CliRunner()
    common = ["--backbone", "tiny", "--dataset", "synthetic", *OPTIONS]
    trained = runner.invoke(app, ["train", *common, "--protocol", "mela-vs-ben", "--fold", "r0f0", "--seed", "1",
                                  "--recipe", "demo", "--image-size", "32", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    record = read_checkpoint(paths.finetuned_checkpoint(paths.home(), "synthetic", "tiny", "mela-vs-ben", "r0f0"))["meta"][
        "fold_record"]
    assert record["seed"] == 1 and record["fold"] == "r0f0" and len(record["train_ids"]) > 0
    store = ["--store", str(tmp_path / "store")]
    extracted = runner.invoke(app, ["extract", *common, *store, "--protocol", "mela-vs-ben", "--fold", "r0f0"])
    assert extracted.exit_code == 0, extracted.output
    evaluate = ["evaluate", *common, *store, "--protocol", "mela-vs-ben", "--finetuned", "--fold", "r0f0",
                "--results", str(tmp_path / "results.csv")]
    refused = runner.invoke(app, evaluate)
    assert isinstance(refused.exception, BenchError)
    assert "trained for seed 1, this is seed 0" in str(refused.exception)
    assert "in this fold's test part" in str(refused.exception)
    assert runner.invoke(app, [*evaluate, "--seed", "1"]).exit_code == 0
