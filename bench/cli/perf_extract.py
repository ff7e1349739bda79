"""`bench perf extract`: images/s of the extraction pipeline, the naive loop and the model alone."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from bench.cli.app import console, perf_app
from bench.cli.catalogue import DatasetOptions, RootOption, parse_options
from bench.cli.executor import AddressOption, ExecutorOption
from bench.cli.extract import TTAOption


@perf_app.command("extract")
def perf_extract(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone name (see `bench backbones`).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset adapter (see `bench datasets`).")],
    root: RootOption = None,
    limit: Annotated[Optional[int], typer.Option(help="Measure on the first N manifest rows.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    repeat: Annotated[int, typer.Option(help="Rounds; each figure is its best round (robust to others' load).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    executor: ExecutorOption = "local",
    workers: Annotated[int, typer.Option(help="With --executor ray: measure 1..N Ray workers.")] = 2,
    address: AddressOption = None,
    tta: TTAOption = None,
) -> None:
    """Measure extraction: naive torch loop vs onnxruntime alone (the ceiling) vs the `bench extract` pipeline;
    with --executor ray, the pipeline here vs on Ray with 1..N workers."""
    from bench.perf_extract import measure, measure_on_ray

    if executor == "ray":
        figures = measure_on_ray(backbone, dataset, root, workers=workers, limit=limit, batch_size=batch_size,
                                 repeat=repeat, options=parse_options(option), address=address)
        if as_json:
            print(json.dumps(figures))
        else:
            print_ray(figures, dataset, backbone)
        return
    figures = measure(backbone, dataset, root, limit=limit, batch_size=batch_size, repeat=repeat,
                      options=parse_options(option), tta=tta)
    if as_json:
        print(json.dumps(figures))
        return
    table = Table(title=f"extraction of {figures['images']} {dataset} images with {backbone} "
                        f"({figures['cpus']} CPUs, load {figures['load_average_1min_before']}, best of {repeat})")
    for column in ("", "images/s", "what it runs"):
        table.add_column(column)
    table.add_row("naive", f"{figures['naive_ips']:.1f}", "torch eager, one image at a time, decoding in the loop")
    table.add_row("ceiling", f"{figures['ceiling_ips']:.1f}", "onnxruntime alone on pre-decoded batches")
    table.add_row("pipeline", f"{figures['pipeline_ips']:.1f}", "bench extract (decode overlapped, store writes)")
    if tta:
        table.add_row(f"tta {tta}", f"{figures['tta_views_ps']:.1f} views/s",
                      f"bench extract --tta {tta}: {figures['tta_per_view_vs_pipeline']:.0%} of the pipeline per view")
    console.print(table)
    console.print(f"pipeline = {figures['pipeline_vs_naive']:.2f} x naive, {figures['pipeline_vs_ceiling']:.0%} of "
                  f"the ceiling; start-up {figures['pipeline_startup_s']:.1f} s; peak RSS {figures['peak_rss_mb']:.0f} MB")


def print_ray(figures: dict, dataset: str, backbone: str) -> None:
    table = Table(title=f"extraction of {figures['images']} {dataset} images with {backbone} in {figures['shards']} "
                        f"shards ({figures['cpus']} CPUs, load {figures['load_average_1min_before']}, best of "
                        f"{figures['repeat']})")
    for column in ("", "images/s", "what it runs"):
        table.add_column(column)
    table.add_row("local", f"{figures['local_ips']:.1f}", "bench extract in this process (onnxruntime on all cores)")
    table.add_row("ray, cold", f"{figures['ray_cold_ips']:.1f}", "first Ray run: worker processes start, import torch")
    workers = sorted(int(k.split("_")[1]) for k in figures if k.endswith("_workers_ips"))
    for w in workers:
        table.add_row(f"ray, {w} worker(s)", f"{figures[f'ray_{w}_workers_ips']:.1f}",
                      f"{w} task(s) at a time, one CPU or GPU each")
    console.print(table)
    console.print(f"Ray start-up {figures['ray_start_s']:.1f} s", highlight=False)
