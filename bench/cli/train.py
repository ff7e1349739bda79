"""`bench train` and `bench recipes`."""

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.app import app
from bench.cli.options import (DatasetOptions, DesignName, JsonOption, RootOption, SplitName, StoreOption,
                               WeightsOption, parse_pairs)
from bench.cli.output import console, print_json, table
from bench.errors import BenchError
from bench.train.recipes import Recipe, get_recipe, recipes as all_recipes

RecipeOption = Annotated[str, typer.Option("--recipe", help="Training recipe (see `bench recipes`).")]
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Override the recipe's image size (px).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Override the recipe's batch size.")]


@app.command()
def recipes(as_json: JsonOption = False) -> None:
    """List the training recipes `bench train --recipe NAME` accepts."""
    if as_json:
        print_json([dataclasses.asdict(r) for r in all_recipes().values()])
        return
    shown = table("Training recipes (SGD, Nesterov momentum, L2; best validation epoch kept)",
                  ("name", "epochs", "lr", "momentum", "L2", "image", "batch", "trains", "augments", "description"))
    for r in all_recipes().values():
        shown.add_row(r.name, str(r.epochs), f"{r.lr:g}", f"{r.momentum:g}", f"{r.weight_decay:g}",
                      f"{r.image_size} px", str(r.batch_size), _trains(r),
                      "every image" if r.augment == "all" else "minority copies", r.description)
    console.print(shown)


def _trains(recipe: Recipe) -> str:
    layers = "whole network" if recipe.train_last is None else f"last {recipe.train_last} layers"
    layers += f" from a pool of {recipe.views} cached views" if recipe.views else ""
    layers += f" after {recipe.head_epochs} head-only epoch(s)" if recipe.head_epochs else ""
    layers += "; the epoch of best validation AUC kept" if recipe.keep == "auc" else ""
    return "; ".join([layers, *recipe.departures()])


@app.command()
def train(
    backbone: Annotated[str, typer.Option(help="Backbone to train (see `bench backbones`).")],
    dataset: Annotated[str, typer.Option(help="Dataset adapter (see `bench datasets`).")],
    root: RootOption = None,
    protocol: Annotated[Optional[DesignName], typer.Option(help="Label design to fine-tune for (with --fold).")] = None,
    fold: Annotated[Optional[str], typer.Option(help="Fine-tune on this fold's training part, e.g. r0f0.")] = None,
    split: Annotated[SplitName, typer.Option(help="How folds are made.")] = "5x2",
    reference_dir: Annotated[Optional[Path], typer.Option(help="Folder of the paper's fold files.")] = None,
    recipe: RecipeOption = "paper",
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's epochs.")] = None,
    image_size: ImageSize = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Override the recipe's learning rate.")] = None,
    views: Annotated[Optional[int], typer.Option(
        help="Override the recipe's view pool: a top-only recipe then trains from cached trunk activations.")] = None,
    keep: Annotated[Optional[str], typer.Option(
        help="Override which epoch is kept: 'loss' (lowest validation loss) or 'auc' (best validation AUC).")] = None,
    cpu_precision: Annotated[Optional[str], typer.Option(
        help="Override the recipe's arithmetic on the CPU: 'float32', or 'bfloat16' autocast (about 2x faster on "
             "a CPU with bfloat16 instructions, slower on one without).")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="Override what a fine-tune learns: 'design' (the protocol's classes) or 'diagnosis' (every diagnosis "
             "among the same images).")] = None,
    store: StoreOption = None,
    weights: WeightsOption = None,
    limit: Annotated[Optional[int], typer.Option(help="Train on the first N training rows only.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the folds, the validation split and training.")] = 0,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
) -> None:
    """Train a backbone's source stage (without --fold), or fine-tune it on one target fold's training part.

    A rerun of an interrupted command resumes from its last finished epoch. A recipe with a view pool (`views`)
    first stores the trunk's activations in --store, once for every fine-tune from the same trunk.
    """
    from bench.context import Context
    from bench.train.jobs import finetune_job, source_stage_job
    from bench.train.top import fit
    from bench.work import DatasetRef, FineTune, TrainSource, trunk_pass

    if (protocol is None) != (fold is None):
        raise BenchError("fine-tuning needs both --protocol P and --fold K (a source stage takes neither)")
    chosen = get_recipe(recipe).with_overrides(epochs=epochs, image_size=image_size, batch_size=batch_size, lr=lr,
                                               views=views, keep=keep, cpu_precision=cpu_precision,
                                               target=target)
    ctx, options = Context.for_user(store), parse_pairs(option)
    if fold is None:
        unit = TrainSource.of(ctx, backbone, DatasetRef.of(dataset, root, options, limit), chosen, seed, weights)
        job = source_stage_job(unit, ctx)
    else:
        unit = FineTune(backbone, DatasetRef.of(dataset, root, options), protocol, split, fold, chosen, seed,
                        reference_dir, limit, weights)
        job = finetune_job(unit, ctx)
    console.print(f"[bold]{backbone}[/bold] on {dataset}: {len(job.data.labels)} training images, classes "
                  f"{', '.join(job.data.classes)}; recipe {chosen.name} ({chosen.epochs} epochs at "
                  f"{chosen.image_size} px, {_trains(job.recipe)})")
    started = time.perf_counter()
    trunk = trunk_pass(unit, ctx)
    if trunk:
        from bench.cli.extract import fill_trunk

        fill_trunk(trunk, ctx)
    state = fit(job)
    auc = f", AUC {state.best_val_auc:.4f}" if chosen.keep == "auc" else ""
    console.print(f"best epoch {state.best_epoch}/{state.epoch} (validation loss {state.best_val_loss:.4f}{auc}), "
                  f"{time.perf_counter() - started:.0f} s -> {job.out}")
    if fold is not None:
        root_arg = f" --root {root}" if root else ""
        console.print(f"next: bench extract --backbone {backbone} --dataset {dataset}{root_arg} "
                      f"--protocol {protocol} --fold {fold}")
