"""`bench extract`: fill the feature store with one backbone's features of one dataset."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from bench.cli.app import app
from bench.cli.options import (AddressOption, DatasetOptions, DesignName, ExecutorOption, RootOption, StoreOption,
                               TTAOption, WeightsOption, parse_pairs)
from bench.cli.output import console
from bench.progress import progress
from bench.errors import BenchError

if TYPE_CHECKING:  # torch and onnxruntime load only when a command needs them
    from bench.context import Context
    from bench.extract.pipeline import Extraction
    from bench.work import ExtractTrunk


@app.command()
def extract(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone name (see `bench backbones`).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset adapter (see `bench datasets`).")],
    root: RootOption = None,
    protocol: Annotated[Optional[DesignName], typer.Option(
        help="With --fold: use the model fine-tuned for this label design.")] = None,
    fold: Annotated[Optional[str], typer.Option(help="With --protocol: the fold (e.g. r0f1) whose fine-tune to use.")] = None,
    store: StoreOption = None,
    weights: WeightsOption = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    limit: Annotated[Optional[int], typer.Option(help="Keep only the first N manifest rows (quick runs).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Leave unreadable images out (listed) instead of failing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a feature set made by another model or for other images.")] = False,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    tta: TTAOption = None,
    trunk: Annotated[Optional[str], typer.Option(
        help="Store instead the trunk activations recipe TRUNK's top trains from (its cut point, image size and "
             "pool of `views` views per image): what `bench train --recipe TRUNK` reads.")] = None,
    seed: Annotated[int, typer.Option(help="With --trunk: seeds the view pool (as `bench train --seed`).")] = 0,
    from_trunk: Annotated[bool, typer.Option(
        help="With --protocol/--fold, of a fine-tune trained from cached trunk activations: its top on their view "
             "0, no image read.")] = False,
) -> None:
    """Run a backbone (frozen, or fine-tuned with --protocol/--fold) over a dataset into the feature store.

    Resumable: an interrupted run keeps every finished chunk and the next run computes only the rest.
    """
    from bench.context import Context
    from bench.extract.pipeline import prepare  # torch and onnxruntime load only when a command needs them
    from bench.work import DatasetRef, Extract, weights_file

    if executor == "ray":  # before any work: a missing Ray or an unreachable cluster is said at once
        from bench.study.cluster import connect

        connect(address)
    ctx = Context.for_user(store)
    if trunk is not None:
        if protocol or fold or tta or limit or skip_bad:
            raise BenchError("--trunk stores a backbone's trunk activations of the whole dataset: drop --protocol, "
                             "--fold, --tta, --limit and --skip-bad")
        from bench.train.recipes import get_recipe
        from bench.work import ExtractTrunk

        unit = ExtractTrunk.of(backbone, DatasetRef.of(dataset, root, parse_pairs(option)), get_recipe(trunk), seed,
                               weights_file(weights), batch_size=batch_size, overwrite=overwrite)
        fill_trunk(unit, ctx, executor)
        return
    if from_trunk and (fold is None or tta or executor != "local"):
        raise BenchError("--from-trunk writes a fine-tuned set here: give --protocol and --fold, without --tta or "
                         "--executor ray")
    unit = Extract(backbone, DatasetRef.of(dataset, root, parse_pairs(option), limit), protocol, fold, tta=tta,
                   weights=weights, batch_size=batch_size, skip_bad=skip_bad, overwrite=overwrite)
    job = prepare(unit, ctx)
    try:
        if from_trunk:
            from bench.train.top import features_from_trunk

            features_from_trunk(job, ctx, protocol, fold)
            console.print(f"wrote {job.todo_images} images to {dataset}/{backbone}/{job.key} in {ctx.store} from the "
                          "cached trunk activations", highlight=False)
            return
        _run(job, ctx.store, executor)
    finally:
        job.writer.release()  # the set's write lease: the next writer need not wait for this process to end


def fill_trunk(unit: ExtractTrunk, ctx: Context, executor: str = "local") -> None:
    """Fill (or finish) the trunk set `unit` names (bench.train.trunk), saying how it goes."""
    from bench.train.trunk import prepare

    job = prepare(unit, ctx)
    try:
        _run(job, ctx.store, executor)
    finally:
        job.writer.release()


def _run(job: Extraction, store: str, executor: str) -> None:
    """Compute the job's missing chunks, here or on Ray, saying what is done and what is left."""
    dataset, backbone, model = job.dataset, job.backbone, job.model
    how = "cached" if model.cached else f"exported, max |onnx - torch| = {model.parity_max_abs_diff:.2g}"
    console.print(f"model {model.path} (sha256 {model.sha256[:12]}, {how})", highlight=False)
    target = f"{dataset}/{backbone}/{job.key} in {store}"
    if not job.todo:
        console.print(f"{target} is already complete ({len(job.manifest)} images): nothing to do.", highlight=False)
        return
    if job.writer.damaged:
        console.print(f"{job.writer.damaged} damaged chunk(s) of {target} are computed again", highlight=False)
    if job.writer.changed:
        console.print(f"{job.writer.changed} image(s) changed since {target} was written: their chunks are "
                      "computed again", highlight=False)
    done = job.writer.n_chunks - len(job.todo)
    if done:
        console.print(f"resuming {target}: {done} of {job.writer.n_chunks} chunks already done", highlight=False)
    run = job.run
    if executor == "ray":
        from bench.study.cluster import extract_on_ray

        run = functools.partial(extract_on_ray, job)
    start = time.perf_counter()
    try:
        with progress(f"{dataset}/{backbone}/{job.key}", job.todo_images) as shown:
            run(shown.advance)
    except KeyboardInterrupt:
        kept = job.writer.n_chunks - len(job.writer.missing_chunks())
        console.print(f"interrupted: {kept} of {job.writer.n_chunks} chunks are kept; run the same command to resume")
        raise typer.Exit(130)
    seconds = time.perf_counter() - start
    stored = job.todo_images - len(job.skipped)  # what the set holds now, not what was read
    console.print(f"wrote {stored} images to {target} in {seconds:.1f} s ({job.todo_images / seconds:.1f} images/s)",
                  highlight=False)
    if job.skipped:
        console.print(f"[yellow]skipped {len(job.skipped)} unreadable image(s); their rows are left out of the "
                      "feature set:[/yellow]")
        for path in job.skipped:
            console.print(f"  {path}", highlight=False)
