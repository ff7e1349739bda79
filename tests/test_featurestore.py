"""The zarr feature store on its own: layout, provenance, chunk-wise resumable writes, stale sets, ls/rm."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from featurestore import FeatureStore, StoreError

D = 6
IDS = np.array([f"img{i:02d}" for i in range(10)])
ATTRS = {"model_sha256": "a" * 64, "preprocessing": {"size": 32, "mean": (0.5, 0.5, 0.5)},
         "dataset_fingerprint": "f" * 64, "bench_version": "0.1.0"}


def features(rows: range) -> np.ndarray:
    return np.stack([np.full(D, r, np.float32) + np.arange(D, dtype=np.float32) / 10 for r in rows])


def fill(store: FeatureStore, chunks=None, key="frozen", **changes):
    writer = store.open_for_write("ds", "bb", key, image_ids=changes.pop("ids", IDS), dim=D, chunk_rows=4,
                                  attrs={**ATTRS, **changes})
    for chunk in writer.missing_chunks() if chunks is None else chunks:
        writer.write_chunk(chunk, features(writer.chunk_rows_of(chunk)))
    return writer


def test_layout_chunking_and_provenance(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store)

    group = zarr.open_group(tmp_path / "store", mode="r")["ds/bb/frozen"]
    assert group["features"].shape == (10, D) and group["features"].dtype == np.float32
    assert group["features"].chunks == (4, D)  # chunked along n only
    attrs = group.attrs.asdict()
    assert {k: attrs[k] for k in ("model_sha256", "dataset_fingerprint", "bench_version")} == \
        {k: ATTRS[k] for k in ("model_sha256", "dataset_fingerprint", "bench_version")}
    assert attrs["preprocessing"] == {"size": 32, "mean": [0.5, 0.5, 0.5]}
    assert (attrs["n"], attrs["d"], attrs["chunk_rows"]) == (10, D, 4) and attrs["created"]

    read = store.read("ds", "bb", "frozen")
    assert read.image_ids.tolist() == IDS.tolist()
    np.testing.assert_array_equal(read.features, features(range(10)))
    assert read.attrs["model_sha256"] == ATTRS["model_sha256"] and read.attrs["skipped"] == []


def test_missing_and_incomplete_sets_name_the_command_that_makes_them(tmp_path):
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(StoreError, match=r"no feature set ds/bb/ft-mal-vs-ben-r0f1 .*bench extract --backbone bb "
                                         r"--dataset ds --root PATH --protocol mal-vs-ben --fold r0f1"):
        store.read("ds", "bb", "ft-mal-vs-ben-r0f1")
    fill(store, chunks=[0, 2])
    with pytest.raises(StoreError, match=r"incomplete \(2 of 3 chunks\).*bench extract --backbone bb --dataset ds"):
        store.read("ds", "bb", "frozen")


def test_reopening_keeps_finished_chunks_and_offers_only_the_missing_ones(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store, chunks=[1])
    writer = fill(store, chunks=[])
    assert writer.missing_chunks() == [0, 2]
    np.testing.assert_array_equal(writer.features[4:8], features(range(4, 8)))
    assert np.isnan(writer.features[0:4]).all()  # never computed: NaN, not zero


def test_write_chunk_takes_exactly_one_whole_chunk(tmp_path):
    writer = fill(FeatureStore(tmp_path / "store"), chunks=[])
    with pytest.raises(ValueError, match="shape"):
        writer.write_chunk(2, features(range(8, 12)))  # the last chunk holds 2 rows
    assert writer.missing_chunks() == [0, 1, 2]


@pytest.mark.parametrize(("change", "says"), [
    ({"model_sha256": "b" * 64}, "another model (sha256 aaaaaaaaaaaa stored, bbbbbbbbbbbb now)"),
    ({"preprocessing": {"size": 64, "mean": (0.5, 0.5, 0.5)}}, "other preprocessing (size 32 stored, 64 now)"),
    ({"dataset_fingerprint": "e" * 64}, "another dataset fingerprint"),
    ({"ids": IDS[:8]}, "other images (10 stored, 8 now)"),
    ({"ids": IDS[::-1]}, "other images (the same number, other ids or order)"),
])
def test_a_set_made_differently_is_never_reused(tmp_path, change, says):
    store = FeatureStore(tmp_path / "store")
    fill(store, chunks=[0])
    with pytest.raises(StoreError) as error:
        fill(store, chunks=[], **change)
    message = str(error.value)
    assert says in message
    assert "bench store rm ds bb frozen" in message and "--overwrite" in message
    assert fill(store, chunks=[]).missing_chunks() == [1, 2]  # the old set is untouched

    writer = store.open_for_write("ds", "bb", "frozen", image_ids=change.get("ids", IDS), dim=D, chunk_rows=4,
                                  attrs={**ATTRS, **{k: v for k, v in change.items() if k != "ids"}}, overwrite=True)
    assert writer.missing_chunks() == list(range(writer.n_chunks))


def test_a_set_with_no_finished_chunk_is_replaced_without_asking(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store, chunks=[])
    writer = fill(store, chunks=[], model_sha256="b" * 64)
    assert writer.group.attrs["model_sha256"] == "b" * 64


def test_skipped_rows_are_left_out_of_reads_and_stored_as_nan(tmp_path):
    store = FeatureStore(tmp_path / "store")
    writer = fill(store, chunks=[0, 2])
    skipped = np.array([False, True, False, False])
    writer.write_chunk(1, features(range(4, 8)), skipped=skipped)

    read = store.read("ds", "bb", "frozen")
    assert "img05" not in read.image_ids and len(read.image_ids) == 9
    assert read.attrs["skipped"] == ["img05"]
    np.testing.assert_array_equal(read.features, np.delete(features(range(10)), 5, axis=0))
    assert np.isnan(writer.features[5]).all()

    writer.write_chunk(1, features(range(4, 8)))  # the image became readable (say, a run killed before `done`)
    assert store.read("ds", "bb", "frozen").image_ids.tolist() == IDS.tolist()


def test_list_and_remove(tmp_path):
    store = FeatureStore(tmp_path / "store")
    assert store.list() == []
    fill(store)
    fill(store, key="ft-mal-vs-ben-r0f0", chunks=[0])
    infos = {i.key: i for i in store.list()}
    assert infos["frozen"].complete and (infos["frozen"].n, infos["frozen"].d) == (10, D)
    assert not infos["ft-mal-vs-ben-r0f0"].complete and infos["ft-mal-vs-ben-r0f0"].chunks_done == 1
    assert infos["frozen"].model_sha256 == ATTRS["model_sha256"]

    store.remove("ds", "bb", "frozen")
    assert [i.key for i in store.list()] == ["ft-mal-vs-ben-r0f0"]
    store.remove("ds", "bb", "ft-mal-vs-ben-r0f0")
    assert store.list() == [] and not (tmp_path / "store" / "ds").exists()
    with pytest.raises(StoreError, match="no feature set ds/bb/frozen"):
        store.remove("ds", "bb", "frozen")
