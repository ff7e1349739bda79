"""`bench backbones` and `bench datasets`: what the installed plugins provide."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from bench import plugins
from bench.cli.app import app, console

datasets_app = typer.Typer(help="List dataset adapters, or show one dataset's counts.", invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@app.command()
def backbones() -> None:
    """List every backbone the installed plugins provide."""
    table = Table(title="Backbones")
    for column in ("name", "architecture", "input", "feature", "dim", "initial weights", "source stages", "plugin"):
        table.add_column(column)
    for b in plugins.backbones().values():
        stages = "; ".join(f"{s.task} on {s.dataset} (from {s.start})" for s in b.source_stages) or "none"
        size = b.preprocessing.size
        table.add_row(b.name, b.architecture, f"{size}x{size}", b.feature_layer, str(b.feature_dim),
                      b.initial_weights, stages, b.plugin)
    console.print(table)


@datasets_app.callback()
def datasets(ctx: typer.Context) -> None:
    """List every dataset adapter the installed plugins provide."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="Datasets")
    for column in ("name", "needs --root", "description", "plugin"):
        table.add_column(column)
    for d in plugins.datasets().values():
        table.add_row(d.name, "yes" if d.needs_root else "no", d.description, d.plugin)
    console.print(table)


def parse_options(options: list[str]) -> dict[str, str]:
    """`--option key=value` pairs for an adapter's own options (e.g. `keep_acral=true`)."""
    from bench.errors import BenchError

    bad = [o for o in options if "=" not in o]
    if bad:
        raise BenchError(f"--option takes key=value, got {bad}")
    return dict(o.split("=", 1) for o in options)


RootOption = Annotated[Optional[Path], typer.Option("--root", help="Folder holding the dataset's files.")]
DatasetOptions = Annotated[list[str], typer.Option("--option", "-o", help="Adapter option key=value (repeatable).")]


@datasets_app.command("show")
def show(name: str, root: RootOption = None, option: DatasetOptions = []) -> None:  # noqa: B006 (typer reads it)
    """Count a dataset's images per diagnosis (and per split / difficulty where it has them)."""
    manifest = plugins.get_dataset(name).manifest(root, **parse_options(option))
    console.print(f"[bold]{name}[/bold]: {len(manifest)} images")
    for column in ("diagnosis", "source_label", "split", "difficulty"):
        if column in manifest and manifest[column].notna().any() and _tells_more(manifest, column):
            table = Table(title=f"per {column}")
            table.add_column(column)
            table.add_column("images", justify="right")
            for value, count in manifest[column].value_counts().items():
                table.add_row(str(value), str(count))
            console.print(table)
    if "lesion_id" in manifest and manifest["lesion_id"].notna().any():
        console.print(f"{manifest['lesion_id'].nunique()} lesions")


def _tells_more(manifest, column: str) -> bool:
    """A source label is shown only where it splits a diagnosis (PH2's atypical nevi), not where it renames one."""
    return column != "source_label" or manifest[column].nunique() > manifest["diagnosis"].nunique()
