"""`bench evaluate`, `bench compare`, `bench perf evaluate` end to end on a feature store the tests write."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from typer.testing import CliRunner

from bench import paths, plugins
from bench.cli import app
from bench.dataset import image_digests, label_fingerprint
from bench.errors import BenchError
from bench.context import Context
from bench.evaluate.score import evaluate, prepare
from bench.work import DatasetRef, Evaluate
from bench.evaluate.features import reader
from bench.overlap import ID_ONLY, SOURCE_OVERLAP
from bench.evaluate.results import read_table
from featurestore import FeatureStore, StoreError
from protocols.errors import ProtocolError
from protocols.splits import fold_record, make_folds

OPTIONS = {"n": "120", "size": "32"}
DATA = ["--dataset", "synthetic", "--option", "n=120", "--option", "size=32"]
SYNTHETIC = DatasetRef.of("synthetic", options=OPTIONS)
runner = CliRunner()


def manifest() -> pd.DataFrame:
    return plugins.get_dataset("synthetic").manifest(None, **OPTIONS)


def write_set(store: Path, backbone: str, key: str = "frozen", signal: float = 2.0, seed: int = 0,
              keep: slice = slice(None), sha: str = "sha-frozen", record: dict | None = None) -> np.ndarray:
    """Features carrying the diagnosis with strength `signal`; returns them in manifest order."""
    m = manifest()
    rng = np.random.default_rng(seed)
    codes = m["diagnosis"].astype("category").cat.codes.to_numpy()
    x = rng.normal(size=(len(m), 16)).astype(np.float32)
    x[np.arange(len(m)), codes] += signal
    write_features(store, backbone, key, m.iloc[keep], np.abs(x)[keep], sha, {"fold_record": record} if record else {})
    return np.abs(x)


def trained_on(fold: str, seed: int = 0, protocol: str = "mela-vs-ben") -> dict:
    """The record a fine-tune on `fold`'s training part carries."""
    train_ids, _ = make_folds(manifest(), "5x2", seed=seed)[fold]
    return fold_record(protocol, "5x2", seed, fold, list(train_ids))


def write_features(store: Path, backbone: str, key: str, rows: pd.DataFrame, x: np.ndarray, sha: str,
                   extra: dict | None = None, dataset: str = "synthetic") -> None:
    """`x` as the features of the manifest rows `rows`, recorded as computed from their images as they are now."""
    labelled = manifest() if dataset == "synthetic" else rows
    writer = FeatureStore(store).open_for_write(
        dataset, backbone, key, image_ids=rows["image_id"].to_numpy(), image_digests=image_digests(rows),
        dim=x.shape[1], chunk_rows=64, overwrite=True,
        attrs={"model_sha256": sha, "preprocessing": {}, "labels_fingerprint": label_fingerprint(labelled),
               **(extra or {})})
    for chunk in writer.missing_chunks():
        rows = writer.chunk_rows_of(chunk)
        writer.write_chunk(chunk, x[rows.start:rows.stop])


def cli(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, (BenchError, StoreError, ProtocolError, SystemExit)):
        raise result.exception
    return result


def test_evaluate_writes_one_row_per_fold_and_one_per_test_image(tmp_path):
    store, results, predictions = tmp_path / "store", tmp_path / "results.csv", tmp_path / "pred.csv.gz"
    write_set(store, "good")
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "good", *DATA, "--store", str(store),
              "--results", str(results), "--predictions", str(predictions))
    assert out.exit_code == 0, out.output
    assert "mean" in out.output and "95% CI" in out.output and "difficulty" in out.output
    rows = read_table(results)
    assert rows["fold"].tolist() == [f"r{r}f{f}" for r in range(5) for f in range(2)]
    for column in ("auc", "map", "acc", "se", "sp", "n_train", "n_test", "c", "model_sha256",
                   "dataset_fingerprint", "bench_version", "command", "created", "auc_ci_low", "auc_ci_high"):
        assert rows[column].notna().all(), column
    assert rows["auc"].mean() > 0.8 and (rows["model_sha256"] == "sha-frozen").all()
    m = manifest()
    kept = (m["diagnosis"] != "basal_cell_carcinoma").sum()  # mela-vs-ben drops carcinomas
    assert (rows["n_train"] + rows["n_test"] == kept).all()
    scores = read_table(predictions)
    assert len(scores) == rows["n_test"].sum() == 5 * kept
    assert set(scores.columns) >= {"dataset", "protocol", "backbone", "finetuned", "split", "fold", "image_id",
                                   "label", "score"}
    lesion = m.set_index("image_id")["lesion_id"]
    folds = prepare(Evaluate("good", SYNTHETIC, "mela-vs-ben"), Context.for_user()).folds
    for fold, part in scores.groupby("fold"):
        train = set(lesion[folds[fold][0]])
        assert not train & set(lesion[part["image_id"]]), fold  # no lesion in both train and test


def test_the_stored_command_regenerates_the_rows(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    write_set(store, "good")
    cli("evaluate", "--protocol", "mal-vs-ben", "--backbone", "good", *DATA, "--store", str(store),
        "--seed", "3", "--results", str(results))
    first = read_table(results)
    command = first["command"].iloc[0].split()
    assert command[:2] == ["bench", "evaluate"] and "--seed" in command
    again = tmp_path / "again.csv"
    assert cli(*command[1:], "--results", str(again)).exit_code == 0
    pd.testing.assert_series_equal(read_table(again)["auc"], first["auc"])


def test_results_are_appended_or_replaced_by_key(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    write_set(store, "good")
    base = ["evaluate", "--backbone", "good", *DATA, "--store", str(store), "--results", str(results)]
    cli(*base, "--protocol", "mela-vs-ben")
    cli(*base, "--protocol", "mal-vs-ben")
    assert len(read_table(results)) == 20
    write_set(store, "good", signal=0.0, sha="sha-new")  # re-extracted: a rerun must replace, not duplicate
    cli(*base, "--protocol", "mela-vs-ben")
    table = read_table(results)
    assert len(table) == 20
    assert set(table.loc[table["protocol"] == "mela-vs-ben", "model_sha256"]) == {"sha-new"}
    assert set(table.loc[table["protocol"] == "mal-vs-ben", "model_sha256"]) == {"sha-frozen"}


def test_no_test_image_influences_c_end_to_end(tmp_path):
    """Scrambling the features of r0f0's test images leaves r0f0's chosen C (and validation) untouched."""
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    x = write_set(store_a, "good")
    m = manifest()
    unit = Evaluate("good", SYNTHETIC, "mela-vs-carc-vs-ben")
    test_ids = set(prepare(unit, Context.for_user(str(store_a))).folds["r0f0"][1])
    scrambled = x.copy()
    rows = m["image_id"].isin(test_ids).to_numpy()
    scrambled[rows] = np.random.default_rng(9).permutation(scrambled[rows]) * 5
    write_features(store_b, "good", "frozen", m, scrambled, "sha-b")
    a = evaluate(unit, Context.for_user(str(store_a))).results.set_index("fold")
    b = evaluate(unit, Context.for_user(str(store_b))).results.set_index("fold")
    assert a.loc["r0f0", "c"] == b.loc["r0f0", "c"]
    assert a.loc["r0f0", "auc"] != b.loc["r0f0", "auc"]  # the scrambled test features did change the scores


def test_finetuned_reads_each_folds_own_set(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    folds = list(prepare(Evaluate("tuned", SYNTHETIC, "mela-vs-ben"), Context.for_user()).folds)
    for k, fold in enumerate(folds):
        write_set(store, "tuned", paths.feature_key("mela-vs-ben", fold), seed=k, sha=f"sha-{fold}",
                  record=trained_on(fold))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "tuned", "--finetuned", *DATA,
              "--store", str(store), "--results", str(results))
    assert out.exit_code == 0, out.output
    rows = read_table(results)
    assert rows["finetuned"].all() and rows["model_sha256"].tolist() == [f"sha-{f}" for f in folds]
    assert "--finetuned" in rows["command"].iloc[0]
    missing = cli("evaluate", "--protocol", "mal-vs-ben", "--backbone", "tuned", "--finetuned", *DATA,
                  "--store", str(store), "--results", str(results))
    assert isinstance(missing.exception, StoreError) and "--protocol mal-vs-ben --fold r0f0" in str(missing.exception)


def test_one_fine_tuned_fold_evaluates_alone_and_its_command_says_so(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    write_set(store, "tuned", paths.feature_key("mela-vs-ben", "r1f0"), sha="sha-r1f0",
              record=trained_on("r1f0"))  # only r1f0 was tuned
    args = ["evaluate", "--protocol", "mela-vs-ben", "--backbone", "tuned", "--finetuned", *DATA, "--store", str(store)]
    out = cli(*args, "--fold", "r1f0", "--results", str(results))
    assert out.exit_code == 0, out.output
    rows = read_table(results)
    assert rows["fold"].tolist() == ["r1f0"] and rows["model_sha256"].tolist() == ["sha-r1f0"]
    command = rows["command"].iloc[0].split()
    assert command[-2:] == ["--fold", "r1f0"]
    again = tmp_path / "again.csv"
    assert cli(*command[1:], "--results", str(again)).exit_code == 0
    pd.testing.assert_series_equal(read_table(again)["auc"], rows["auc"])
    unknown = cli(*args, "--fold", "r9f9", "--results", str(results))
    assert isinstance(unknown.exception, ProtocolError)
    assert "no fold r9f9 in split '5x2'; its folds are r0f0" in str(unknown.exception)


@pytest.mark.parametrize("record, says", [
    (None, "carries no record"),
    (trained_on("r0f0", seed=1), "seed 1, this is seed 0"),
    (trained_on("r0f1"), "trained for fold 'r0f1', this is fold 'r0f0'"),
    (trained_on("r0f0", protocol="mal-vs-ben"), "protocol 'mal-vs-ben'"),
    ({**trained_on("r0f0"), "fold": "r0f0", "train_ids": trained_on("r0f1")["train_ids"]}, "does not match the hash"),
])
def test_a_fine_tune_is_scored_only_on_the_fold_it_was_trained_for(tmp_path, record, says):
    store = tmp_path / "store"
    write_set(store, "tuned", paths.feature_key("mela-vs-ben", "r0f0"), sha="sha-r0f0", record=record)
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "tuned", "--finetuned", *DATA, "--store",
              str(store), "--fold", "r0f0", "--results", str(tmp_path / "results.csv"))
    assert isinstance(out.exception, BenchError) and says in str(out.exception)
    assert not (tmp_path / "results.csv").exists()


def test_a_fine_tune_that_saw_test_images_is_refused_even_with_a_consistent_record(tmp_path):
    store = tmp_path / "store"
    _, test_ids = make_folds(manifest(), "5x2")["r0f0"]
    record = fold_record("mela-vs-ben", "5x2", 0, "r0f0", list(test_ids[:3]))
    write_set(store, "tuned", paths.feature_key("mela-vs-ben", "r0f0"), sha="sha-r0f0", record=record)
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "tuned", "--finetuned", *DATA, "--store",
              str(store), "--fold", "r0f0")
    assert isinstance(out.exception, BenchError) and "3 of the images it trained on are in this fold's test part" \
        in str(out.exception)


def test_different_seeds_share_no_partition():
    m = manifest()
    partitions = {seed: {frozenset(test) for _, test in make_folds(m, "5x2", seed=seed).values()}
                  for seed in range(3)}
    assert not partitions[0] & partitions[1] and not partitions[1] & partitions[2] and not partitions[0] & partitions[2]


def test_features_for_fewer_images_than_the_dataset_are_refused(tmp_path):
    store = tmp_path / "store"
    write_set(store, "partial", keep=slice(0, 50))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "partial", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert isinstance(out.exception, BenchError) and "no features in the store" in str(out.exception)
    assert not (tmp_path / "r.csv").exists()


def test_compare_from_predictions_and_recomputed(tmp_path):
    store, predictions = tmp_path / "store", tmp_path / "pred.csv"
    write_set(store, "good", signal=3.0)
    write_set(store, "noise", signal=0.0, seed=1)
    for backbone in ("good", "noise"):
        cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", backbone, *DATA, "--store", str(store),
            "--results", str(tmp_path / "r.csv"), "--predictions", str(predictions))
    stored = cli("compare", "good", "noise", "--protocol", "mela-vs-ben", *DATA[:2],
                 "--predictions", str(predictions))
    recomputed = cli("compare", "good", "noise", "--protocol", "mela-vs-ben", *DATA, "--store", str(store))
    assert stored.exit_code == 0, stored.output
    assert "AUC(good) - AUC(noise) = +" in stored.output and "10 folds" in stored.output
    assert stored.output == recomputed.output
    # both tests, the F-test counting training variance, and the bootstrap p no finer than its draws
    assert "p < 0.0002 (paired bootstrap over test lesions, 10000 draws" in stored.output
    assert "5x2cv paired F-test" in stored.output and "verdict p = " in stored.output
    coarse = cli("compare", "good", "noise", "--protocol", "mela-vs-ben", *DATA[:2], "--predictions",
                 str(predictions), "--draws", "1000", "--json")
    summary = json.loads(coarse.output)
    assert (summary["bootstrap_p"], summary["bootstrap_p_is_bound"], summary["test"]) == (0.002, True, "5x2cv F")
    assert summary["verdict_p"] == max(0.002, summary["test_p_value"])
    absent = cli("compare", "good", "other", "--protocol", "mela-vs-ben", *DATA[:2], "--predictions", str(predictions))
    assert isinstance(absent.exception, BenchError) and "no predictions for other" in str(absent.exception)


def evaluated_pair(tmp_path) -> tuple[Path, Path]:
    """Results and predictions of a configuration carrying the diagnosis and of one carrying noise."""
    store, results, predictions = tmp_path / "store", tmp_path / "r.csv", tmp_path / "pred.csv"
    write_set(store, "good", signal=3.0)
    write_set(store, "noise", signal=0.0, seed=1)
    for backbone in ("good", "noise"):
        cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", backbone, *DATA, "--store", str(store),
            "--results", str(results), "--predictions", str(predictions))
    return results, predictions


def select(results: Path, predictions: Path, *candidates: str):
    return cli("select", *candidates, "--protocol", "mela-vs-ben", *DATA[:2], "--results", str(results),
               "--predictions", str(predictions))


def test_select_chooses_by_validation_auc_never_by_test_auc(tmp_path):
    results, predictions = evaluated_pair(tmp_path)
    rows = read_table(results)
    rows.loc[rows["backbone"] == "noise", "auc"] = 1.0  # a test AUC the choice must not see
    rows.to_csv(results, index=False)
    out = select(results, predictions, "noise", "good")
    assert out.exit_code == 0, out.output
    chosen = read_table(results).query("backbone == 'select[noise; good]'")
    assert len(chosen) == 10 and set(chosen["selected"]) == {"good"}
    assert chosen["command"].iloc[0].startswith("bench select noise good --protocol mela-vs-ben")
    scores = read_table(predictions)
    picked = scores[scores["backbone"] == "select[noise; good]"].drop(columns="backbone").reset_index(drop=True)
    good = scores[scores["backbone"] == "good"].drop(columns="backbone").reset_index(drop=True)
    pd.testing.assert_frame_equal(picked, good)
    compared = cli("compare", "select[noise; good]", "noise", "--protocol", "mela-vs-ben", *DATA[:2],
                   "--predictions", str(predictions))
    assert compared.exit_code == 0 and "10 folds" in compared.output


def test_select_breaks_a_tie_towards_the_candidate_listed_first(tmp_path):
    results, predictions = evaluated_pair(tmp_path)
    rows = read_table(results)
    rows["validation_auc"] = 0.8
    rows.to_csv(results, index=False)
    for first, second in (("noise", "good"), ("good", "noise")):
        assert select(results, predictions, first, second).exit_code == 0
        chosen = read_table(results).query(f"backbone == 'select[{first}; {second}]'")
        assert set(chosen["selected"]) == {first}


def test_select_refuses_results_without_validation_auc_or_candidates(tmp_path):
    results, predictions = evaluated_pair(tmp_path)
    absent = select(results, predictions, "good", "other")
    assert isinstance(absent.exception, BenchError) and "no synthetic mela-vs-ben results for 'other'" in str(absent.exception)
    read_table(results).drop(columns="validation_auc").to_csv(results, index=False)
    old = select(results, predictions, "good", "noise")
    assert isinstance(old.exception, BenchError) and "predate recorded validation AUCs" in str(old.exception)
    assert "bench evaluate --protocol mela-vs-ben" in str(old.exception)


def test_perf_evaluate_prints_seconds(tmp_path):
    store = tmp_path / "store"
    write_set(store, "good")
    out = cli("perf", "evaluate", "--protocol", "mela-vs-ben", "--backbone", "good", *DATA, "--store", str(store))
    assert out.exit_code == 0, out.output
    assert "whole evaluation" in out.output and " s" in out.output


def test_reference_split_on_fold_files(tmp_path):
    """--split reference reads a fold file naming this dataset's images, and notes the repeated partition."""
    store = tmp_path / "store"
    write_set(store, "good")
    m = manifest()
    ids = m["image_id"].tolist()
    halves = [[f"{i}.tiff" for i in ids[0::2]], [f"{i}.tiff" for i in ids[1::2]]]
    (tmp_path / "folds.yml").write_text(f"Fold_1: {halves}\nFold_2: {halves[::-1]}\n".replace("'", ""))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "good", *DATA, "--store", str(store),
              "--split", "reference", "--reference-dir", str(tmp_path / "folds.yml"),
              "--results", str(tmp_path / "r.csv"))
    assert out.exit_code == 0, out.output
    assert "Fold_2 repeats Fold_1" in out.output
    assert read_table(tmp_path / "r.csv")["fold"].tolist() == ["ref1x1", "ref1x2"]


def test_a_dataset_without_lesion_ids_says_its_images_are_not_grouped(tmp_path, monkeypatch):
    store = tmp_path / "store"
    write_set(store, "good")
    adapter = type(plugins.get_dataset("synthetic"))
    drawn = adapter.manifest
    monkeypatch.setattr(adapter, "manifest", lambda self, *a, **k: drawn(self, *a, **k).drop(columns="lesion_id"))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "good", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert out.exit_code == 0, out.output
    assert "synthetic records no lesion ids: every image counts as its own lesion" in " ".join(out.output.split())

# --- fusion, power normalisation, TTA sets, source-stage leakage ----------------------------------------------

def test_a_fused_set_is_the_concatenation_of_the_l2_normalised_sets(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    a, b = write_set(store, "a", seed=1), write_set(store, "b", seed=2, sha="sha-b")
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a+b", *DATA, "--store", str(store),
              "--results", str(results))
    assert out.exit_code == 0, out.output
    rows = read_table(results)
    assert set(rows["backbone"]) == {"a+b"} and (rows["model_sha256"] == "sha-frozen+sha-b").all()
    fused = read_features(store, "a+b")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(fused.features, np.hstack([unit(a), unit(b)]), rtol=1e-5)


def test_sets_of_different_images_are_not_fused(tmp_path):
    store = tmp_path / "store"
    write_set(store, "a")
    write_set(store, "b", keep=slice(1, None))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a+b", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert isinstance(out.exception, BenchError) and "cannot fuse a and b" in str(out.exception)
    assert "different images" in str(out.exception)


def test_fine_tunes_of_different_folds_are_not_fused(tmp_path):
    """The fold check reads the fused set's record: every member must carry the same one."""
    store, key = tmp_path / "store", paths.feature_key("mela-vs-ben", "r0f0")
    write_set(store, "a", key, record=trained_on("r0f0"))
    write_set(store, "b", key, sha="sha-b", record=trained_on("r0f0", seed=1))
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a+b", "--finetuned", "--fold", "r0f0", *DATA,
              "--store", str(store), "--results", str(tmp_path / "r.csv"))
    assert isinstance(out.exception, BenchError) and "trained on different folds" in str(out.exception)


def test_power_normalisation_is_the_signed_square_root_and_a_row_of_its_own(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    x = write_set(store, "a")
    for extra in ([], ["--power-norm"]):
        out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a", *DATA, "--store", str(store),
                  "--results", str(results), *extra)
    assert "· a [power] ·" in out.output  # the name is text, not console markup
    rows = read_table(results)
    assert sorted(set(rows["backbone"])) == ["a", "a [power]"]
    assert rows.groupby("backbone")["power_norm"].first().to_dict() == {"a": False, "a [power]": True}
    assert "--power-norm" in rows.loc[rows["backbone"] == "a [power]", "command"].iloc[0]
    np.testing.assert_allclose(read_features(store, "a", power=True).features, np.sqrt(x), rtol=1e-6)


def test_tta_evaluation_reads_the_tta_set(tmp_path):
    store, results = tmp_path / "store", tmp_path / "results.csv"
    write_set(store, "a")
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a", *DATA, "--store", str(store),
              "--results", str(results), "--tta", "dihedral")
    assert isinstance(out.exception, StoreError) and "frozen-tta-dihedral" in str(out.exception)
    write_set(store, "a", key="frozen-tta-dihedral", sha="sha-tta")
    cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "a", *DATA, "--store", str(store),
        "--results", str(results), "--tta", "dihedral")
    rows = read_table(results)
    assert (rows["backbone"] == "a [tta dihedral]").all() and (rows["model_sha256"] == "sha-tta").all()


def test_a_backbone_is_refused_on_images_its_source_stage_trained_on(tmp_path):
    store = tmp_path / "store"
    write_set(store, "derm")
    m = manifest()
    attrs = zarr.open_group(store, mode="r+")["synthetic/derm/frozen"].attrs
    # what extraction found by content: one evaluated image is a resized copy of a source-stage training image
    copy = m.loc[m["diagnosis"] == "melanoma", "image_id"].iloc[0]
    attrs[SOURCE_OVERLAP] = [{"test_id": copy, "train_id": "other-1", "how": "perceptual", "distance": 3}]
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "derm", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert isinstance(out.exception, BenchError)
    assert (f"1 image(s) of synthetic are pictures derm's source stage trained on ({copy} ~ other-1 (3 bits))"
            in str(out.exception)) and "--drop-overlap" in str(out.exception)
    # left out and counted instead: tested once in each of the five repetitions
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "derm", *DATA, "--store", str(store),
              "--results", str(tmp_path / "dropped.csv"), "--predictions", str(tmp_path / "p.csv"), "--drop-overlap")
    assert out.exit_code == 0, out.output
    rows = read_table(tmp_path / "dropped.csv")
    assert rows["n_overlap_dropped"].sum() == 5 and rows["command"].str.endswith("--drop-overlap").all()
    assert copy not in set(read_table(tmp_path / "p.csv")["image_id"])
    attrs[SOURCE_OVERLAP] = []
    attrs[ID_ONLY] = ["other-1"]
    cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "derm", *DATA, "--store", str(store),
        "--results", str(tmp_path / "r.csv"))  # no picture in common: scored
    del attrs[SOURCE_OVERLAP]  # a set extracted when only ids were compared
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "derm", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert isinstance(out.exception, BenchError) and "by id only" in str(out.exception)
    attrs[ID_ONLY] = []  # a set of a backbone without a source stage, extracted before the content guard
    out = cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "derm", *DATA, "--store", str(store),
              "--results", str(tmp_path / "r.csv"))
    assert out.exit_code == 0, out.output


def read_features(store: Path, backbone: str, power: bool = False):
    return reader(store, "synthetic", backbone, power=power, image_ids=manifest()["image_id"])(None)


# --- external evaluation: the SVM learns on one dataset and is scored on another --------------------------------

def write_folder(root: Path, store: Path, sha: str = "sha-frozen", without: str | None = None) -> pd.DataFrame:
    """A second dataset: another synthetic draw as a `folder` dataset, its features made as `write_set` makes them
    (the same diagnosis, the same direction); `without` leaves a diagnosis out."""
    for row in plugins.get_dataset("synthetic").manifest(None, n="80", size="32", seed="1").itertuples():
        if row.diagnosis != without:
            (root / row.diagnosis).mkdir(parents=True, exist_ok=True)
            shutil.copy(row.path, root / row.diagnosis / Path(row.path).name)
    m = plugins.get_dataset("folder").manifest(root)
    codes = m["diagnosis"].map({d: i for i, d in enumerate(sorted(manifest()["diagnosis"].unique()))}).to_numpy()
    x = np.random.default_rng(5).normal(size=(len(m), 16)).astype(np.float32)
    x[np.arange(len(m)), codes] += 2.0
    write_features(store, "good", "frozen", m, np.abs(x), sha, dataset="folder")
    return m


def external(store: Path, root: Path, *extra: str):
    return cli("evaluate", "--protocol", "mela-vs-ben", "--backbone", "good", "--train-dataset", "synthetic",
               "--train-option", "n=120", "--train-option", "size=32", "--dataset", "folder", "--root", str(root),
               "--store", str(store), *extra)


def test_an_external_evaluation_fits_on_one_dataset_and_scores_all_of_another(tmp_path):
    store, root, results, predictions = tmp_path / "store", tmp_path / "folder", tmp_path / "r.csv", tmp_path / "p.csv"
    write_set(store, "good")
    target = write_folder(root, store)
    out = external(store, root, "--results", str(results), "--predictions", str(predictions))
    assert out.exit_code == 0, out.output
    row = read_table(results).iloc[0]
    kept = (target["diagnosis"] != "basal_cell_carcinoma").sum()
    trained = (manifest()["diagnosis"] != "basal_cell_carcinoma").sum()
    assert (row["dataset"], row["split"], row["fold"]) == ("synthetic -> folder", "external", "all")
    assert (row["n_train"], row["n_test"], row["train_dataset"]) == (trained, kept, "synthetic")
    assert row["auc"] > 0.8 and row["auc_ci_low"] < row["auc"] < row["auc_ci_high"]
    scored = read_table(predictions)
    assert sorted(scored["image_id"]) == sorted(target.loc[target["diagnosis"] != "basal_cell_carcinoma", "image_id"])
    again = tmp_path / "again.csv"  # the stored command regenerates the row
    assert cli(*row["command"].split()[1:], "--results", str(again)).exit_code == 0
    assert read_table(again)["auc"].tolist() == [row["auc"]]
    text = external(store, root, "--results", str(again), "--json").stdout
    summary = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON (jq refuses it)"))
    assert summary[0]["dataset"] == "synthetic -> folder"
    assert summary[0]["auc_sd"] is None  # one row has no spread: null, not NaN


def test_an_external_evaluation_with_folds_adds_the_training_set_to_each_folds_training_part(tmp_path):
    store, root, results = tmp_path / "store", tmp_path / "folder", tmp_path / "r.csv"
    write_set(store, "good")
    target = write_folder(root, store)
    assert external(store, root, "--split", "5x2", "--results", str(results)).exit_code == 0
    rows = read_table(results)
    kept = (target["diagnosis"] != "basal_cell_carcinoma").sum()
    trained = (manifest()["diagnosis"] != "basal_cell_carcinoma").sum()
    assert len(rows) == 10 and (rows["dataset"] == "synthetic -> folder").all()
    assert ((rows["n_train"] - trained) + rows["n_test"] == kept).all()  # all of A + the fold's part of B


def test_an_external_evaluation_refuses_a_design_one_side_lacks_and_sets_made_otherwise(tmp_path):
    store, root = tmp_path / "store", tmp_path / "folder"
    write_set(store, "good")
    write_folder(root, store, without="basal_cell_carcinoma")
    out = external(store, root, "--protocol", "mela-vs-carc-vs-ben")
    assert out.exit_code != 0 and str(out.exception).startswith("folder: mela-vs-carc-vs-ben needs basal cell")
    write_folder(tmp_path / "other", store, sha="sha-other")
    out = external(store, tmp_path / "other")
    assert out.exit_code != 0 and "differ in model (weights)" in str(out.exception)
