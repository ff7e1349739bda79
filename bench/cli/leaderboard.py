"""`bench leaderboard`: the markdown leaderboard and its ROC curves, from the results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.app import app
from bench.cli.output import console
from bench.paths import DEFAULT_LEADERBOARD, DEFAULT_RESULTS


@app.command()
def leaderboard(
    results: Annotated[Path, typer.Option(help="Results table written by `bench evaluate`.")] = DEFAULT_RESULTS,
    predictions: Annotated[Optional[Path], typer.Option(help="Per-image scores, for the ROC curves.")] = None,
    out: Annotated[Path, typer.Option(
        help="Markdown file to write; ROC PNGs go next to it.")] = DEFAULT_LEADERBOARD,
    note: Annotated[str, typer.Option(help="A paragraph printed under the title (e.g. where the data came from).")] = "",
) -> None:
    """Render the markdown leaderboard (and ROC curves) from the results table."""
    from bench.evaluate.leaderboard import render
    from bench.evaluate.results import read_tables

    table, scores = read_tables(results, predictions) if predictions is not None else (*read_tables(results), None)
    path = render(table, out, scores, note)
    console.print(f"leaderboard -> {path}")
