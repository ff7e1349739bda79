"""The zarr feature store on its own: layout, provenance, chunk-wise resumable writes, stale sets, ls/rm."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

from featurestore import FeatureStore, StoreError

D = 6
IDS = np.array([f"img{i:02d}" for i in range(10)])
DIGESTS = np.array([f"{i:064x}" for i in range(10)])
ATTRS = {"model_sha256": "a" * 64, "preprocessing": {"size": 32, "mean": (0.5, 0.5, 0.5)},
         "labels_fingerprint": "f" * 64, "bench_version": "0.1.0"}


def features(rows: range) -> np.ndarray:
    return np.stack([np.full(D, r, np.float32) + np.arange(D, dtype=np.float32) / 10 for r in rows])


def fill(store: FeatureStore, chunks=None, key="frozen", **changes):
    ids = changes.pop("ids", IDS)
    digests = changes.pop("digests", DIGESTS[:len(ids)])
    writer = store.open_for_write("ds", "bb", key, image_ids=ids, image_digests=digests, dim=D, chunk_rows=4,
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
    assert {k: attrs[k] for k in ("model_sha256", "labels_fingerprint", "bench_version")} == \
        {k: ATTRS[k] for k in ("model_sha256", "labels_fingerprint", "bench_version")}
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

    ids = change.get("ids", IDS)
    writer = store.open_for_write("ds", "bb", "frozen", image_ids=ids, image_digests=DIGESTS[:len(ids)], dim=D,
                                  chunk_rows=4,
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


def test_an_image_changed_since_recomputes_only_its_chunk(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store)
    digests = DIGESTS.copy()
    digests[5] = "e" * 64  # img05 rewritten in place (or fixed after it was skipped)
    writer = fill(store, chunks=[], digests=digests)
    assert writer.changed == 1 and writer.missing_chunks() == [1]
    with pytest.raises(StoreError, match="incomplete"):  # never read while its rows are stale
        store.read("ds", "bb", "frozen")
    writer.write_chunk(1, features(range(4, 8)))
    assert store.read("ds", "bb", "frozen").digests[5] == "e" * 64


def test_a_second_writer_is_refused_while_the_first_lives_and_a_dead_ones_lease_is_taken_over(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store, chunks=[0])
    lease = tmp_path / "store" / "_leases" / "ds" / "bb" / "frozen.json"
    assert json.loads(lease.read_text())["pid"] == os.getpid()  # held while the set is incomplete

    def held_by(pid: int) -> None:
        lease.write_text(json.dumps({"id": "other", "pid": pid, "host": socket.gethostname(), "since": "earlier"}))

    held_by(os.getppid())  # a live process: pytest's parent
    with pytest.raises(StoreError) as error:
        fill(store, chunks=[])
    assert f"pid {os.getppid()} on {socket.gethostname()}, since earlier" in str(error.value)
    assert f"remove its lease {lease}" in str(error.value)
    with pytest.raises(StoreError, match="another process"):
        store.remove("ds", "bb", "frozen")

    held_by(dead_pid())
    writer = fill(store, chunks=[])
    assert json.loads(lease.read_text())["pid"] == os.getpid()
    fill(store, chunks=writer.missing_chunks())
    assert not lease.exists()  # complete: released


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_writer_whose_set_was_replaced_stops_instead_of_writing(tmp_path):
    store = FeatureStore(tmp_path / "store")
    old = fill(store, chunks=[0])
    store.open_for_write("ds", "bb", "frozen", image_ids=IDS[:8], image_digests=DIGESTS[:8], dim=D, chunk_rows=4,
                         attrs=ATTRS, overwrite=True)  # e.g. a writer that found the lease stale
    with pytest.raises(StoreError, match="removed or replaced by another writer"):
        old.write_chunk(1, features(range(4, 8)))
    assert store.list()[0].n == 8 and store.list()[0].chunks_done == 0


def test_a_full_disk_is_one_error_and_keeps_the_finished_chunks(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "store")
    writer = fill(store, chunks=[0])

    class Full:
        shape, chunks = writer.features.shape, writer.features.chunks

        def __setitem__(self, key, value):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "features", Full())
    with pytest.raises(StoreError, match=r"cannot write chunk 1 of ds/bb/frozen in .*No space left on device\. "
                                         r"The 1 finished chunk\(s\) are kept: free space"):
        writer.write_chunk(1, features(range(4, 8)))
    monkeypatch.undo()
    assert fill(store).missing_chunks() == []  # the same command resumes and finishes
    np.testing.assert_array_equal(store.read("ds", "bb", "frozen").features, features(range(10)))


@pytest.mark.parametrize("name", ["../escaped", "", ".hidden", "a/b", "-x"])
def test_names_that_are_not_names_are_refused(tmp_path, name):
    with pytest.raises(StoreError, match="cannot name a feature set"):
        FeatureStore(tmp_path / "store").open_for_write(name, "bb", "frozen", image_ids=IDS, image_digests=DIGESTS,
                                                        dim=D, chunk_rows=4, attrs=ATTRS)
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(("url", "says"), [("s3://bucket/x", "pip install s3fs"), ("nosuch://x", "Protocol not known")])
def test_a_store_url_zarr_cannot_open_is_one_error_naming_it(url, says):
    with pytest.raises(StoreError, match=f"cannot open the store {url}: .*{says}"):
        FeatureStore(url).list()


def test_a_set_made_before_content_hashes_is_recomputed_not_trusted(tmp_path):
    store = FeatureStore(tmp_path / "store")
    fill(store)
    del zarr.open_group(tmp_path / "store", mode="a")["ds/bb/frozen/image_sha256"]  # as bench 0.1.0 wrote sets
    writer = fill(store, chunks=[])
    assert writer.changed == 10 and writer.missing_chunks() == [0, 1, 2]


def test_a_store_behind_an_fsspec_url_takes_leases_there_too(monkeypatch):
    store = FeatureStore("memory://leases-test/store")
    fill(store, chunks=[0])
    parent = os.getppid()
    monkeypatch.setattr(os, "getpid", lambda: parent)  # this test as seen from another, live process
    with pytest.raises(StoreError, match=r"another process .* remove its lease memory://.*leases-test/store/_leases/ds"):
        fill(store, chunks=[])
    monkeypatch.undo()
    fill(store)
    assert store.list()[0].complete
