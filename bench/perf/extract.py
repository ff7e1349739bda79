"""`bench perf extract`: the extraction pipeline's images/s against a naive loop and against the model alone."""

from __future__ import annotations

import functools
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench import plugins
from featurestore.keys import TTA_VIEWS
from bench.backbone import Preprocessing
from bench.context import Context
from bench.extract.pipeline import BATCH_SIZE, SESSION_OPTIONS, Extraction, create_session, prepare
from bench.threads import count as thread_count
from bench.work import DatasetRef, Extract


# onnxruntime session settings `--sweep` measures against the chosen ones (SESSION_OPTIONS), one change each
SWEEP = {
    "spinning workers": {"config": {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"}},
    "extended graph optimisation": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "basic graph optimisation": {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    "no memory arena": {"enable_cpu_mem_arena": False},
}


def measure(backbone_name: str, dataset_name: str, root: Path | None, *, limit: int | None = 500,
            batch_size: int = BATCH_SIZE, repeat: int = 3, options: dict[str, str] | None = None,
            sweep: bool = False, tta: str | None = None, weights: Path | None = None) -> dict:
    """images/s, on the same images in one process, of (a) torch eager one image at a time decoding in the loop,
    (b) onnxruntime alone on pre-decoded batches, the ceiling, (c) `bench extract`'s run into a temporary store.
    With `sweep`, also the ceiling under each onnxruntime setting of SWEEP and on one thread.

    The runs take turns `repeat` times and each keeps its best round, so a burst of load from other processes
    on a shared machine skews one round rather than the comparison. With `tta`, (d) the pipeline with test-time
    augmentation takes its turn too, counted in views/s (8 model inputs per image for `dihedral`). `weights`:
    the model's weights file instead of its initial weights (`bench extract --weights`).
    """
    load = os.getloadavg()[0]
    dataset = DatasetRef.of(dataset_name, root, options, limit)

    def job(store: Path, tta: str | None = None) -> Extraction:
        return prepare(Extract(backbone_name, dataset, tta=tta, weights=weights, batch_size=batch_size),
                       Context.for_user(str(store)))

    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        start = time.perf_counter()
        first = job(Path(tmp) / "0")
        startup = time.perf_counter() - start  # manifest, model (from the ONNX cache), store set: once per run
        files, model = first.manifest["path"].tolist(), first.model
        decoded = [model.preprocessing.load(f) for f in files]  # also puts the files in the page cache
        net = plugins.get_backbone(backbone_name).create(weights)  # the weights the exported model has
        variants = {"chosen": (0, SESSION_OPTIONS)}
        if sweep:
            variants |= {name: (0, {**SESSION_OPTIONS, **change}) for name, change in SWEEP.items()}
            variants["one thread"] = (1, SESSION_OPTIONS)
        seconds = {"naive": [], "pipeline": [], "tta": [], **{name: [] for name in variants}}
        for i in range(repeat):
            for name, (threads, settings) in variants.items():
                seconds[name].append(_ceiling(model.path, decoded, model.preprocessing, batch_size, threads, settings))
            seconds["pipeline"].append(_seconds((first if i == 0 else job(Path(tmp) / str(i))).run))
            seconds["naive"].append(_seconds(lambda: _naive(net, files, model.preprocessing)))
            if tta:
                seconds["tta"].append(_seconds(job(Path(tmp) / f"tta{i}", tta).run))
    naive, ceiling, pipeline = (len(files) / min(seconds[k]) for k in ("naive", "chosen", "pipeline"))
    return {
        "images": len(files),
        "batch_size": batch_size,
        "naive_ips": round(naive, 1),
        "ceiling_ips": round(ceiling, 1),
        "pipeline_ips": round(pipeline, 1),
        "pipeline_vs_naive": round(pipeline / naive, 2),
        "pipeline_vs_ceiling": round(pipeline / ceiling, 3),
        "pipeline_startup_s": round(startup, 2),
        "session_options": {"intra_op_num_threads": thread_count(), **SESSION_OPTIONS},
        "session_sweep_ips": {name: round(len(files) / min(seconds[name]), 1) for name in variants} if sweep else {},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "repeat": repeat,
        "cpus": os.cpu_count(),
        "threads": thread_count(),
        "load_average_1min_before": round(load, 2),
        **(_tta_figures(TTA_VIEWS[tta] * len(files), min(seconds["tta"]), pipeline) if tta else {}),
    }


def _tta_figures(views: int, seconds: float, pipeline_ips: float) -> dict:
    rate = views / seconds
    return {"tta_views_ps": round(rate, 1), "tta_per_view_vs_pipeline": round(rate / pipeline_ips, 3)}


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _ceiling(model: Path, images: list[np.ndarray], preprocessing: Preprocessing, batch_size: int,
             threads: int = 0, settings: dict | None = None) -> float:
    """Seconds of onnxruntime alone over the images, decoded and normalised beforehand."""
    session = create_session(model, threads, settings)
    name = session.get_inputs()[0].name
    batches = [preprocessing.normalise(np.stack(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return _seconds(lambda: [session.run(None, {name: batch}) for batch in batches])


def _naive(net: torch.nn.Module, files: list[str], preprocessing: Preprocessing) -> None:
    """What one writes first: decode, normalise and run one image at a time in torch."""
    with torch.inference_mode():
        for f in files:
            net(torch.from_numpy(preprocessing.normalise(preprocessing.load(f)[None])))


# --- `--executor ray` -----------------------------------------------------------------------------------------

def measure_on_ray(backbone_name: str, dataset_name: str, root: Path | None, *, workers: int = 2,
                   limit: int | None = 500, batch_size: int = BATCH_SIZE, repeat: int = 3,
                   options: dict[str, str] | None = None, address: str | None = None) -> dict:
    """images/s of `bench extract` in this process and on Ray with 1..`workers` tasks at a time (one CPU or GPU
    each), on the same images and the same chunks: 2 x `workers` shards, so every worker count has work to share.

    A first Ray run (worker processes starting, importing torch) is reported apart as `ray_cold_ips`; then the
    runs take turns `repeat` times and each figure is its best round, as in `measure`."""
    from bench.study.cluster import connect, extract_on_ray

    load = os.getloadavg()[0]
    start = time.perf_counter()
    connect(address)
    ray_start = time.perf_counter() - start
    dataset = DatasetRef.of(dataset_name, root, options, limit)
    manifest = dataset.manifest(Context.for_user())
    n = min(len(manifest), limit or len(manifest))
    rows = -(-n // (2 * workers * batch_size)) * batch_size  # 2 x workers chunks of whole batches
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        def seconds(name: str, ray_workers: int | None) -> float:
            unit = Extract(backbone_name, dataset, batch_size=batch_size, rows_per_chunk=rows)
            job = prepare(unit, Context.for_user(str(Path(tmp) / name)))
            return _seconds(job.run if ray_workers is None else
                            functools.partial(extract_on_ray, job, workers=ray_workers))

        cold = seconds("cold", workers)  # also puts the files in the page cache
        runs = {"local": None, **{f"ray_{w}_workers": w for w in range(1, workers + 1)}}
        best = {name: min(seconds(f"{name}-{i}", w) for i in range(repeat)) for name, w in runs.items()}
    return {"images": n, "batch_size": batch_size, "shards": -(-n // rows), "ray_start_s": round(ray_start, 2),
            "ray_cold_ips": round(n / cold, 1), **{f"{name}_ips": round(n / s, 1) for name, s in best.items()},
            "repeat": repeat, "cpus": os.cpu_count(), "load_average_1min_before": round(load, 2)}
