"""`bench extract`: a backbone's ONNX model run by onnxruntime over a dataset, into the zarr feature store.

Images are decoded, resized and normalised in a thread pool a few batches ahead of inference (PIL and numpy
release the GIL), so the model is never waiting for pixels. Work is done and saved a whole store chunk at a time.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

import bench
from bench import paths
from bench.extract import tta as views
from bench.backbone import Checkpoint, Preprocessing
from bench.context import Context
from bench.dataset import image_digests, label_fingerprint
from bench.errors import BenchError
from bench.extract.export import export_onnx
from bench.extract.model_cache import ExportedModel
from bench.overlap import ID_ONLY, SOURCE_OVERLAP, TRAINED_ON, find_overlap
from bench.threads import count as thread_count
from bench.work import Extract, weights_file
from featurestore import FeatureStore, SetWriter
from featurestore.keys import check_tta

BATCH_SIZE = 32
CHUNK_BYTES = 4 << 20  # target size of one store chunk of features
PREFETCH = 4  # batches decoded ahead of inference
# onnxruntime's CPU session, chosen by `bench perf extract --sweep` (see the README's Performance section).
# Waiting workers sleep rather than spin: a spinning pool takes the cores the decoders need, and under a second
# job it burns the time slices the other workers wait for.
SESSION_OPTIONS = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "enable_cpu_mem_arena": True,
    "config": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
}


@dataclass
class Batch:
    chunk: int
    rows: np.ndarray  # positions in the chunk
    files: np.ndarray  # image paths, one per row
    images: np.ndarray  # float32 (m, 3, S, S), the readable rows only
    readable: np.ndarray  # bool, one per row
    errors: list[str]  # why each unreadable row failed, naming its file


@dataclass
class Extraction:
    """One planned extraction: the model, the rows and the store set; `run()` computes the missing chunks."""

    dataset: str
    backbone: str
    key: str
    manifest: pd.DataFrame
    model: ExportedModel
    writer: SetWriter
    batch_size: int = BATCH_SIZE
    skip_bad: bool = False
    todo: list[int] = field(default_factory=list)  # chunks still to compute
    skipped: list[str] = field(default_factory=list)  # paths of the unreadable images this run left out
    threads: int = 0  # onnxruntime's intra-op threads; 0: `bench.threads.count()` (a Ray task: the CPUs it was given)
    tta: str | None = None  # test-time augmentation (bench.extract.tta): each image's feature is the mean over its views
    # a trunk's pass (bench.train.trunk.ViewPool.rows): (session, batch, manifest positions) -> each image's store row
    pool_rows: Callable[..., np.ndarray] | None = None

    @property
    def todo_images(self) -> int:
        return sum(len(self.writer.chunk_rows_of(c)) for c in self.todo)

    def fill(self, advance: Callable[[int], None] = lambda n: None) -> str:
        """Compute the missing chunks and let the set go (a Ray worker outlives the job: its lease must not); the
        model's digest."""
        try:
            self.run(advance)
        finally:
            self.writer.release()
        return self.model.sha256

    def run(self, advance: Callable[[int], None] = lambda n: None) -> None:
        """Compute and store every missing chunk; `advance(k)` after each batch of k images."""
        session = create_session(self.model.path, self.threads)
        paths_ = self.manifest["path"].to_numpy()
        chunk, buffer, readable = -1, None, None
        for batch in prefetch(self._batches(paths_), self._load):
            if batch.chunk != chunk:
                chunk = batch.chunk
                rows = self.writer.chunk_rows_of(chunk)
                buffer = np.zeros((len(rows), self.writer.features.shape[1]), np.float32)
                readable = np.ones(len(buffer), bool)
            if batch.errors and not self.skip_bad:
                kept = self.writer.n_chunks - len(self.writer.missing_chunks())
                raise BenchError(f"{batch.errors[0]} ({kept} finished chunk(s) of features are kept; a re-run resumes)")
            self.skipped += batch.files[~batch.readable].tolist()
            readable[batch.rows] = batch.readable
            if len(batch.images):
                kept = batch.rows[batch.readable]
                buffer[kept] = (self.pool_rows(session, batch, rows.start + kept) if self.pool_rows
                                else features_of(session, batch, self.tta))
            if batch.rows[-1] == len(buffer) - 1:
                self.writer.write_chunk(chunk, buffer, skipped=~readable)
            advance(len(batch.rows))

    def _batches(self, paths_: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for chunk in self.todo:
            rows = self.writer.chunk_rows_of(chunk)
            for start in range(0, len(rows), self.batch_size):
                positions = np.arange(start, min(start + self.batch_size, len(rows)))
                yield chunk, positions, paths_[rows.start + positions]

    def _load(self, item: tuple[int, np.ndarray, np.ndarray]) -> Batch:
        chunk, positions, files = item
        return load_batch(chunk, positions, files, self.model.preprocessing)


def load_batch(chunk: int, rows: np.ndarray, files: np.ndarray, preprocessing: Preprocessing) -> Batch:
    images, errors, readable = [], [], np.ones(len(files), bool)
    for i, path in enumerate(files):
        try:
            images.append(preprocessing.load(path))
        except BenchError as exc:
            readable[i] = False
            errors.append(str(exc))
    size = preprocessing.size
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return Batch(chunk, rows, files, preprocessing.normalise(stacked), readable, errors)


def prefetch(items: Iterator, load: Callable, ahead: int = PREFETCH) -> Iterator:
    """`load(item)` for each item in order, computed by a thread pool up to `ahead` items in advance."""
    pool = ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="decode")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupt waits for at most the batches in flight


def features_of(session, batch: Batch, tta: str | None) -> np.ndarray:
    """The batch's features, or with `tta` the mean over each image's views (bench.extract.tta)."""
    if tta is None:
        return run_model(session, batch)
    return views.mean_over_views(lambda view: run_model(session, dataclasses.replace(batch, images=view)),
                                 batch.images)


def run_model(session, batch: Batch) -> np.ndarray:
    features = session.run(None, {session.get_inputs()[0].name: batch.images})[0]
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise BenchError(f"the model gave non-finite features for {batch.files[batch.readable][~finite][0]}: its "
                         "weights are broken (NaN or overflow); check the checkpoint it was exported from")
    return features


def create_session(model: Path, threads: int = 0, settings: dict | None = None):
    """An onnxruntime session on the GPU where one is really usable, else on the CPU (`threads` of it, 0:
    `bench.threads.count()`) with `settings` (default SESSION_OPTIONS), without log noise."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: a GPU-less machine must not print provider warnings
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or thread_count()
    options.inter_op_num_threads = 1  # the graph runs sequentially; parallelism is within each operator
    settings = settings or SESSION_OPTIONS
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["graph_optimization_level"])
    options.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    for key, value in settings["config"].items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model), options, providers=providers())


def providers() -> list[str]:
    import onnxruntime as ort
    import torch

    # onnxruntime-gpu lists CUDA whenever it was built with it; torch tells whether a device actually exists
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def chunk_rows(dim: int, batch_size: int) -> int:
    """About CHUNK_BYTES of features per chunk, a whole number of batches."""
    rows = max(1, CHUNK_BYTES // (4 * dim))
    return max(batch_size, rows // batch_size * batch_size)


def source_overlap(backbone: str, source: Checkpoint | None, manifest: pd.DataFrame) -> dict:
    """The attrs that record which of the manifest's images are pictures `backbone`'s source stage (whose trained
    weights are `source`) trained on; none without one. Recorded, not refused: the set may be an SVM's training
    side, which may be; evaluation refuses them on the test side."""
    meta = source.meta if source else {}
    if ID_ONLY in meta and TRAINED_ON not in meta:
        raise BenchError(f"{source.path} records the images its source stage trained on by id only: train {backbone}'s "
                         "source stage again so that they are compared with the images scored by content")
    if TRAINED_ON not in meta:
        return {}
    return {SOURCE_OVERLAP: find_overlap(pd.DataFrame(meta[TRAINED_ON]), manifest).to_records()}


def prepare(unit: Extract, ctx: Context) -> Extraction:
    """Load the manifest, export (or find) the model and open the store set; nothing is computed yet.

    A trained source stage's checkpoint is the model's weights, so that its preprocessing (e.g. the smaller image
    size it was trained at) is used, not the backbone's default. `unit.rows_per_chunk` sets a new set's chunk
    length (default: about CHUNK_BYTES of features); a chunk is also the unit of work a Ray worker takes.
    `unit.tta` (e.g. "dihedral") stores each image's mean feature over its views, in a set of its own key."""
    dataset, limit = unit.dataset, unit.dataset.limit
    if unit.batch_size < 1 or (limit is not None and limit < 1):
        raise BenchError("--batch-size and --limit must be at least 1")
    if (unit.protocol is None) != (unit.fold is None):
        raise BenchError("a fine-tuned feature set needs both --protocol and --fold")
    check_tta(unit.tta)
    if unit.weights is not None and unit.fold is not None:
        raise BenchError("--weights is the frozen model's; a fine-tuned set's model is its fold's checkpoint: drop "
                         "--weights or --protocol/--fold")
    backbone = ctx.registry.backbone(unit.backbone)
    features = FeatureStore(ctx.store)
    features.exists()  # an unusable store URL fails now, not after the export
    # each checkpoint is read once, whatever asks for its parts: the overlap guard, the export, the fold record;
    # --weights stand in for a source stage's weights (a bench checkpoint among them keeps its record)
    source_weights = weights_file(unit.weights) or ctx.source_weights(backbone)
    source = Checkpoint(source_weights) if source_weights else None
    checkpoint = source
    if unit.fold is not None:
        checkpoint = Checkpoint(paths.finetuned_checkpoint(ctx.home, dataset.adapter, unit.backbone, unit.protocol,
                                                           unit.fold))
        if not checkpoint.path.is_file():
            raise BenchError(f"no fine-tuned checkpoint {checkpoint.path}: fine-tune {unit.backbone} on "
                             f"{dataset.adapter} for protocol {unit.protocol}, fold {unit.fold} first (`bench train`)")
    # the model first: weights that are missing or cannot be fetched fail before the dataset is read
    model = export_onnx(backbone, checkpoint, home=ctx.home)
    manifest = dataset.manifest(ctx)
    if limit is not None:
        manifest = manifest.head(limit)
    guard = source_overlap(backbone.name, source, manifest)
    key = unit.set_key
    # a fine-tuned set carries its checkpoint's record of the fold it trained on: evaluation checks it
    record = checkpoint.meta.get("fold_record") if unit.fold is not None else None
    attrs = {
        "model_sha256": model.sha256,
        "preprocessing": model.preprocessing.to_dict(),
        "labels_fingerprint": label_fingerprint(manifest),  # not identity: features depend on the images only
        "dataset": dataset.adapter,
        "backbone": unit.backbone,
        "key": key,
        "tta": unit.tta or "none",
        "weights": str(checkpoint.path) if checkpoint else "initial weights",
        "dataset_options": dataset.options,
        "bench_version": bench.__version__,
        **({"fold_record": record} if unit.fold is not None else {}),
        **guard,
    }
    writer = features.open_for_write(
        dataset.adapter, unit.backbone, key, image_ids=manifest["image_id"].astype(str).to_numpy(),
        image_digests=image_digests(manifest), dim=backbone.feature_dim,
        chunk_rows=unit.rows_per_chunk or chunk_rows(backbone.feature_dim, unit.batch_size), attrs=attrs,
        overwrite=unit.overwrite,
    )
    return Extraction(dataset.adapter, unit.backbone, key, manifest, model, writer, unit.batch_size, unit.skip_bad,
                      todo=writer.missing_chunks(), tta=unit.tta)
