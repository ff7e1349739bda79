"""`bench perf export`: seconds per ONNX export, the first model of an architecture and size and the next ones."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from bench.cli.app import console, perf_app


@perf_app.command("export")
def perf_export(
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone name (see `bench backbones`).")],
    image_size: Annotated[Optional[int], typer.Option(help="Input size (default: the backbone's).")] = None,
    models: Annotated[int, typer.Option(help="Models exported, each with other weights.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Measure ONNX export: the first model of an architecture and size exports its graph, the next ones put
    their weights into it. Parity with torch is checked on every model, as in `bench extract`."""
    from bench.perf_export import measure

    figures = measure(backbone, image_size, models)
    if as_json:
        print(json.dumps(figures))
        return
    table = Table(title=f"ONNX export of {figures['backbone']} at {figures['image_size']} px, empty cache "
                        f"({figures['cpus']} CPUs, load {figures['load_average_1min_before']})")
    for column in ("model", "seconds", "what it does"):
        table.add_column(column)
    table.add_row("1", f"{figures['first_s']:.2f}", "exports the graph (torch dynamo), checks parity")
    for i, s in enumerate(figures["next_s"], start=2):
        table.add_row(str(i), f"{s:.2f}", "its weights into the cached graph, checks parity")
    console.print(table)
    console.print(f"max |onnx - torch| of the last model: {figures['parity_max_abs_diff']:.3g}", highlight=False)
