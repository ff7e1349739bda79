"""`bench perf evaluate`: seconds for a whole evaluation, split into its parts."""

from __future__ import annotations

import os
import time

from bench.cli.app import perf_app
from bench.cli.options import Backbone, Dataset, DatasetOptions, Protocol, RootOption, Split, StoreOption, parse_pairs
from bench.cli.output import console


@perf_app.command("evaluate")
def perf_evaluate(
    dataset: Dataset,
    backbone: Backbone,
    protocol: Protocol,
    root: RootOption = None,
    store: StoreOption = None,
    split: Split = "5x2",
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
) -> None:
    """Seconds for a whole evaluation (manifest, folds, features, SVM on every fold, bootstrap); writes nothing."""
    from bench.context import Context
    from bench.evaluate.score import prepare, run
    from bench.work import DatasetRef, Evaluate

    unit = Evaluate(backbone, DatasetRef.of(dataset, root, parse_pairs(option)), protocol, split)
    started, cpu = time.perf_counter(), time.process_time()
    inputs = prepare(unit, Context.for_user(store))
    prepared = time.perf_counter()
    done = run(inputs)
    finished = time.perf_counter()
    n = len(inputs.labels)
    console.print(f"{dataset} · {backbone} · {protocol} · {split}: {len(done.results)} folds over {n} images")
    console.print(f"manifest + folds {prepared - started:.1f} s, features + SVM + bootstrap "
                  f"{finished - prepared:.1f} s, whole evaluation {finished - started:.1f} s "
                  f"({time.process_time() - cpu:.1f} s of CPU over {os.cpu_count()} cores)")
