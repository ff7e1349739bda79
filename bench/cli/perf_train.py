"""`bench perf train`: the training loop's images/s beside its ceilings (forward, forward+backward)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bench import plugins
from bench.cli.app import perf_app
from bench.cli.options import JsonOption
from bench.cli.output import console, print_json, table
from bench.cli.train import BatchSize, ImageSize, RecipeOption, _trains
from bench.train.recipes import get_recipe


@perf_app.command("train")
def perf_train(
    backbone: Annotated[str, typer.Option(help="Backbone to time (random weights: only speed is measured).")],
    recipe: RecipeOption = "cpu",
    image_size: ImageSize = None,
    batch_size: BatchSize = None,
    views: Annotated[Optional[int], typer.Option(
        help="Override the recipe's view pool: also time the top's loop on cached trunk activations and the trunk "
             "pass.")] = None,
    cpu_precision: Annotated[Optional[str], typer.Option(
        help="Override the recipe's arithmetic on the CPU: 'float32' or 'bfloat16' autocast.")] = None,
    steps: Annotated[int, typer.Option(help="Timed batches per figure (after two warm-up batches).")] = 10,
    repeat: Annotated[int, typer.Option(help="Rounds; each figure is its best round (robust to others' load).")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Training images/s on the current device: the loop's head-only and training epochs beside their ceilings,
    the network's forward and forward+backward passes on batches already in memory."""
    from bench.perf.train import measure

    chosen = get_recipe(recipe).with_overrides(image_size=image_size, batch_size=batch_size, views=views,
                                                 cpu_precision=cpu_precision)
    b = plugins.get_backbone(backbone)
    figures = measure(b.build(), b.feature_dim, b.preprocessing.with_size(chosen.image_size), chosen, steps=steps,
                      repeat=repeat, backbone=b)
    if as_json:
        print_json(figures)
        return
    shown = table(f"{b.name} training, recipe {chosen.name} ({_trains(chosen)}), {chosen.image_size} px, batch "
                  f"{chosen.batch_size} on {figures['device']} ({figures['threads']} threads, load "
                  f"{figures['load_average_1min_before']}, best of {repeat})",
                  ("", "images/s", "of its ceiling", "what it runs"), right=("images/s", "of its ceiling"))
    augmented = "every image" if chosen.augment == "all" else "half the images"
    rows = [("forward", "forward_ips", None, "ceiling of a head-only epoch: inference on normalised batches"),
            ("head-only epoch", "loop_head_ips", "forward_ips", f"the loop, feature net frozen, {augmented} augmented"),
            ("forward + backward", "forward_backward_ips", None,
             "ceiling of a training epoch: a training step on normalised batches"),
            ("training epoch", "loop_ips", "forward_backward_ips", f"the loop, {augmented} augmented")]
    if chosen.views:
        speedup = figures["top_loop_ips"] / figures["loop_ips"]
        rows += [("top from the cache", "top_loop_ips", None, f"the training epoch on cached trunk activations "
                                                              f"({chosen.views} views): {speedup:.1f}x the loop's"),
                 ("trunk pass (once)", "trunk_pass_ips", None,
                  f"{chosen.views} views of each image, augmented, through the trunk in onnxruntime: "
                  f"{10_000 / figures['trunk_pass_ips'] / 60:.1f} min per 10,000 images, decoding aside")]
    for label, key, ceiling, what in rows:
        share = f"{figures[key] / figures[ceiling]:.0%}" if ceiling else ""
        shown.add_row(label, f"{figures[key]:.1f}", share, what)
    console.print(shown)
    memory = "peak GPU memory allocated" if figures["device"] != "cpu" else "peak RSS"
    console.print(f"{memory} {figures['peak_memory_mib']:.0f} MiB", highlight=False)
