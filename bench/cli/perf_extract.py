"""`bench perf extract`: images/s of the extraction pipeline, the naive loop and the model alone."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bench.cli.app import perf_app

from bench.cli.options import (AddressOption, DatasetOptions, ExecutorOption, JsonOption, RootOption, TTAOption,
                               WeightsOption, parse_pairs)
from bench.cli.output import console, print_json, table
from bench.errors import BenchError


@perf_app.command("extract")
def perf_extract(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone name (see `bench backbones`).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset adapter (see `bench datasets`).")],
    root: RootOption = None,
    limit: Annotated[Optional[int], typer.Option(help="Measure on the first N manifest rows.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    repeat: Annotated[int, typer.Option(help="Rounds; each figure is its best round (robust to others' load).")] = 3,
    as_json: JsonOption = False,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    executor: ExecutorOption = "local",
    workers: Annotated[int, typer.Option(help="With --executor ray: measure 1..N Ray workers.")] = 2,
    address: AddressOption = None,
    sweep: Annotated[bool, typer.Option(help="Also measure the ceiling under other onnxruntime settings.")] = False,
    tta: TTAOption = None,
    weights: WeightsOption = None,
) -> None:
    """Measure extraction: naive torch loop vs onnxruntime alone (the ceiling) vs the `bench extract` pipeline;
    with --executor ray, the pipeline here vs on Ray with 1..N workers."""
    from bench.perf.extract import measure, measure_on_ray

    if executor == "ray":
        if weights:
            raise BenchError("--weights is measured here only: drop --executor ray")
        figures = measure_on_ray(backbone, dataset, root, workers=workers, limit=limit, batch_size=batch_size,
                                 repeat=repeat, options=parse_pairs(option), address=address)
        if as_json:
            print_json(figures)
        else:
            print_ray(figures, dataset, backbone)
        return
    figures = measure(backbone, dataset, root, limit=limit, batch_size=batch_size, repeat=repeat,
                      options=parse_pairs(option), sweep=sweep, tta=tta, weights=weights)
    if as_json:
        print_json(figures)
        return
    shown = table(f"extraction of {figures['images']} {dataset} images with {backbone} ({figures['cpus']} CPUs, "
                  f"load {figures['load_average_1min_before']}, best of {repeat})", ("", "images/s", "what it runs"),
                  right=("images/s",))
    shown.add_row("naive", f"{figures['naive_ips']:.1f}", "torch eager, one image at a time, decoding in the loop")
    shown.add_row("ceiling", f"{figures['ceiling_ips']:.1f}", "onnxruntime alone on pre-decoded batches")
    shown.add_row("pipeline", f"{figures['pipeline_ips']:.1f}", "bench extract (decode overlapped, store writes)")
    if tta:
        shown.add_row(f"tta {tta}", f"{figures['tta_views_ps']:.1f} views/s",
                      f"bench extract --tta {tta}: {figures['tta_per_view_vs_pipeline']:.0%} of the pipeline per view")
    console.print(shown)
    console.print(f"pipeline = {figures['pipeline_vs_naive']:.2f} x naive, {figures['pipeline_vs_ceiling']:.0%} of "
                  f"the ceiling; start-up {figures['pipeline_startup_s']:.1f} s; peak RSS {figures['peak_rss_mb']:.0f} MB")
    if sweep:
        print_sweep(figures)


def print_sweep(figures: dict) -> None:
    shown = table(f"onnxruntime alone on pre-decoded batches, by session setting ({figures['threads']} threads "
                  "unless said)", ("setting", "images/s", "of the chosen"), right=("images/s", "of the chosen"))
    chosen = figures["session_sweep_ips"]["chosen"]
    for name, ips in figures["session_sweep_ips"].items():
        shown.add_row(name, f"{ips:.1f}", f"{ips / chosen:.0%}")
    console.print(shown)


def print_ray(figures: dict, dataset: str, backbone: str) -> None:
    shown = table(f"extraction of {figures['images']} {dataset} images with {backbone} in {figures['shards']} shards "
                  f"({figures['cpus']} CPUs, load {figures['load_average_1min_before']}, best of {figures['repeat']})",
                  ("", "images/s", "what it runs"), right=("images/s",))
    shown.add_row("local", f"{figures['local_ips']:.1f}", "bench extract in this process (onnxruntime on all cores)")
    shown.add_row("ray, cold", f"{figures['ray_cold_ips']:.1f}", "first Ray run: worker processes start, import torch")
    workers = sorted(int(k.split("_")[1]) for k in figures if k.endswith("_workers_ips"))
    for w in workers:
        shown.add_row(f"ray, {w} worker(s)", f"{figures[f'ray_{w}_workers_ips']:.1f}",
                      f"{w} task(s) at a time, one CPU or GPU each")
    console.print(shown)
    console.print(f"Ray start-up {figures['ray_start_s']:.1f} s", highlight=False)
