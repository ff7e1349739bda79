"""`bench perf export`: seconds per ONNX export, the first model of an architecture and size and the next ones."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bench.cli.app import perf_app
from bench.cli.options import JsonOption
from bench.cli.output import console, print_json, table


@perf_app.command("export")
def perf_export(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone name (see `bench backbones`).")],
    image_size: Annotated[Optional[int], typer.Option(help="Input size (default: the backbone's).")] = None,
    models: Annotated[int, typer.Option(help="Models exported, each with other weights.")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Measure ONNX export: the first model of an architecture and size exports its graph, the next ones put
    their weights into it. Parity with torch is checked on every model, as in `bench extract`."""
    from bench.perf.export import measure

    figures = measure(backbone, image_size, models)
    if as_json:
        print_json(figures)
        return
    shown = table(f"ONNX export of {figures['backbone']} at {figures['image_size']} px, empty cache "
                  f"({figures['cpus']} CPUs, load {figures['load_average_1min_before']})",
                  ("model", "seconds", "what it does"), right=("model", "seconds"))
    shown.add_row("1", f"{figures['first_s']:.2f}", "exports the graph (torch dynamo), checks parity")
    for i, s in enumerate(figures["next_s"], start=2):
        shown.add_row(str(i), f"{s:.2f}", "its weights into the cached graph, checks parity")
    console.print(shown)
    console.print(f"max |onnx - torch| of the last model: {figures['parity_max_abs_diff']:.3g}", highlight=False)
