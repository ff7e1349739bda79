"""`bench perf train`: the training loop's images/s beside its ceilings (forward, forward+backward)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bench import plugins
from bench.cli.app import console, perf_app
from bench.cli.train import BatchSize, ImageSize, RecipeOption, _trains
from bench.recipes import get_recipe


@perf_app.command("train")
def perf_train(
    backbone: Annotated[str, typer.Option(help="Backbone to time (random weights: only speed is measured).")],
    recipe: RecipeOption = "cpu",
    image_size: ImageSize = None,
    batch_size: BatchSize = None,
    steps: Annotated[int, typer.Option(help="Timed batches per figure (after two warm-up batches).")] = 10,
    repeat: Annotated[int, typer.Option(help="Rounds; each figure is its best round (robust to others' load).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Training images/s on the current device: the loop's head-only and training epochs beside their ceilings,
    the network's forward and forward+backward passes on batches already in memory."""
    from bench.perf_train import measure

    chosen = get_recipe(recipe).with_overrides(image_size=image_size, batch_size=batch_size)
    b = plugins.get_backbone(backbone)
    figures = measure(b.build(), b.feature_dim, b.preprocessing.with_size(chosen.image_size), chosen, steps=steps,
                      repeat=repeat)
    if as_json:
        print(json.dumps(figures))
        return
    table = Table(title=f"{b.name} training, recipe {chosen.name} ({_trains(chosen)}), {chosen.image_size} px, "
                        f"batch {chosen.batch_size} on {figures['device']} ({figures['threads']} threads, load "
                        f"{figures['load_average_1min_before']}, best of {repeat})")
    for column in ("", "images/s", "of its ceiling", "what it runs"):
        table.add_column(column)
    augmented = "every image" if chosen.augment == "all" else "half the images"
    rows = [("forward", "forward_ips", None, "ceiling of a head-only epoch: inference on normalised batches"),
            ("head-only epoch", "loop_head_ips", "forward_ips", f"the loop, feature net frozen, {augmented} augmented"),
            ("forward + backward", "forward_backward_ips", None,
             "ceiling of a training epoch: a training step on normalised batches"),
            ("training epoch", "loop_ips", "forward_backward_ips", f"the loop, {augmented} augmented")]
    for label, key, ceiling, what in rows:
        share = f"{figures[key] / figures[ceiling]:.0%}" if ceiling else ""
        table.add_row(label, f"{figures[key]:.1f}", share, what)
    console.print(table)
    memory = "peak GPU memory allocated" if figures["device"] != "cpu" else "peak RSS"
    console.print(f"{memory} {figures['peak_memory_mib']:.0f} MiB", highlight=False)
