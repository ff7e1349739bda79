"""The results module: rows added and replaced by key, tables written together or not at all, paths checked before
any work, and unreadable files as one error naming them."""

import os

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.evaluate.results import KEY, PREDICTION_KEY, check_writable, matching, read_table, upsert


def fold_rows(backbone: str, aucs: list[float], finetuned: bool = False) -> pd.DataFrame:
    return pd.DataFrame({"dataset": "ham10000", "protocol": "mela-vs-ben", "backbone": backbone,
                         "finetuned": finetuned, "split": "5x2", "fold": [f"r0f{i}" for i in range(len(aucs))],
                         "auc": aucs})


def test_upsert_appends_new_keys_and_replaces_old_ones(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    upsert((path, fold_rows("a", [0.8, 0.82]), KEY))
    upsert((path, fold_rows("b", [0.7, 0.72]), KEY))
    upsert((path, fold_rows("a", [0.9, 0.92]), KEY))
    table = read_table(path)
    assert len(table) == 4
    assert matching(table, backbone="a")["auc"].tolist() == [0.9, 0.92]
    assert matching(table, backbone="b", finetuned=False)["auc"].tolist() == [0.7, 0.72]
    assert table["fold"].tolist()[-2:] == ["r0f0", "r0f1"] and table["finetuned"].dtype == bool


def test_upsert_refuses_a_file_that_is_not_a_results_table(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(BenchError, match=f"{path} lacks column"):
        upsert((path, fold_rows("a", [0.8]), KEY))
    assert path.read_text() == "x,y\n1,2\n"  # nothing lost


def test_results_and_predictions_change_together_or_not_at_all(tmp_path):
    results, predictions = tmp_path / "results.csv", tmp_path / "predictions.csv"
    upsert((results, fold_rows("a", [0.8]), KEY))
    before = results.read_text()
    predictions.write_text("not,a\npredictions,table\n")  # the second file cannot take the rows
    scores = fold_rows("a", [0.8]).assign(image_id="img1")
    with pytest.raises(BenchError, match="lacks column"):
        upsert((results, fold_rows("a", [0.9]), KEY), (predictions, scores, PREDICTION_KEY))
    assert results.read_text() == before

    predictions.unlink()
    upsert((results, fold_rows("a", [0.9]), KEY), (predictions, scores, PREDICTION_KEY))
    assert read_table(results)["auc"].tolist() == [0.9] and len(read_table(predictions)) == 1


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"dataset,fold\na,b,c,d\n1\n"])
def test_an_empty_binary_or_ragged_results_file_is_one_error_naming_it(tmp_path, content):
    path = tmp_path / "results.csv"
    path.write_bytes(content)
    with pytest.raises(BenchError, match=f"{path} is not a readable results table"):
        check_writable(path)
    assert path.read_bytes() == content


def test_a_path_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(BenchError, match=f"cannot write {tmp_path}/file/x/results.csv: {tmp_path}/file is not "
                                         r"writable \(not a folder\)"):
        check_writable(tmp_path / "file" / "x" / "results.csv")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(BenchError, match=f"cannot write {folder}/results.csv: {folder} is not writable"):
            check_writable(folder / "results.csv")
    finally:
        folder.chmod(0o755)


def test_a_write_that_fails_half_way_changes_no_table(tmp_path, monkeypatch):
    results, predictions = tmp_path / "results.csv", tmp_path / "predictions.csv"
    upsert((results, fold_rows("a", [0.8]), KEY))
    before = results.read_text()
    real = pd.DataFrame.to_csv

    def full_disk(self, path, **kwargs):
        if "predictions" in str(path):
            raise OSError(28, "No space left on device")
        return real(self, path, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    scores = fold_rows("a", [0.9]).assign(image_id="img1")
    with pytest.raises(BenchError, match="No space left on device. No table was changed"):
        upsert((results, fold_rows("a", [0.9]), KEY), (predictions, scores, PREDICTION_KEY))
    assert results.read_text() == before and not predictions.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["results.csv"]  # no temporary file


def test_select_refuses_a_column_that_is_no_part_of_the_identity():
    with pytest.raises(ValueError, match="identified by"):
        matching(fold_rows("a", [0.8]), auc=0.8)


def test_reading_a_missing_table_creates_no_folder_or_lock(tmp_path):
    from bench.evaluate.results import read_tables

    with pytest.raises(BenchError, match="not found"):
        read_tables(tmp_path / "typo" / "results.csv")
    assert not (tmp_path / "typo").exists()


def test_the_partitions_of_two_seeds_keep_their_own_rows(tmp_path):
    path = tmp_path / "results.csv"
    upsert((path, fold_rows("a", [0.8, 0.82]).assign(seed=0), KEY))
    upsert((path, fold_rows("a", [0.7, 0.72]).assign(seed=1), KEY))  # same names r0f0, r0f1: other folds
    table = read_table(path)
    assert matching(table, backbone="a", seed=0)["auc"].tolist() == [0.8, 0.82]
    assert matching(table, backbone="a", seed=1)["auc"].tolist() == [0.7, 0.72]


def test_a_table_written_before_the_seed_was_a_key_reads_as_seed_0(tmp_path):
    path = tmp_path / "results.csv"
    fold_rows("a", [0.8]).to_csv(path, index=False)  # no seed column
    assert read_table(path)["seed"].tolist() == [0]
    upsert((path, fold_rows("a", [0.9]).assign(seed=0), KEY))  # replaces it: the same partition
    assert read_table(path)["auc"].tolist() == [0.9]
