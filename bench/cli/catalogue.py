"""`bench backbones` and `bench datasets`: what the installed plugins provide, and one dataset checked in full."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.progress import Progress

from bench import plugins
from bench.cli.app import app
from bench.cli.options import DatasetOptions, JsonOption, RootOption, parse_pairs
from bench.cli.output import console, print_json, table
from bench.dataset import few
from bench.errors import BenchError

datasets_app = typer.Typer(help="List dataset adapters, or show one dataset's counts.", invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@app.command()
def backbones(
    as_json: JsonOption = False,
    search: Annotated[Optional[str], typer.Option(
        "--search", help="List instead the timm and open_clip models matching PATTERN (a word, or a shell "
                         "pattern like 'convnext_*'): each name works as --backbone, e.g. "
                         "timm:convnext_atto.d2_in1k.")] = None,
) -> None:
    """List every backbone the installed plugins provide, or with --search the timm / open_clip models matching a
    pattern, from the installed registries (no network)."""
    if search is not None:
        from plugins.backbones.named import search as find  # imports timm (and open_clip): only when asked

        rows = find(search)
        if rows or as_json:
            _show(rows, f"Backbones matching {search!r}", as_json, right=("dim",))
        else:
            console.print(f"no timm or open_clip model matches {search!r} (open_clip's only with "
                          "`pip install 'bench[clip]'`)", highlight=False, markup=False)
        return
    rows = [{"name": b.name, "architecture": b.architecture, "input": f"{b.preprocessing.size}x{b.preprocessing.size}",
             "feature": b.feature_layer, "dim": b.feature_dim, "initial weights": b.initial_weights,
             "source stages": "; ".join(f"{s.task} on {s.dataset} (from {s.start})" for s in b.source_stages)
             or "none", "plugin": b.plugin} for b in plugins.backbones().values()]
    _show(rows, "Backbones", as_json, right=("dim",))


@datasets_app.callback()
def datasets(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every dataset adapter the installed plugins provide."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [{"name": d.name, "needs --root": d.needs_root, "description": d.description, "plugin": d.plugin}
            for d in plugins.datasets().values()]
    _show(rows, "Datasets", as_json)


@datasets_app.command("show")
def show(name: str, root: RootOption = None, option: DatasetOptions = [],  # noqa: B006 (typer reads it)
         as_json: JsonOption = False) -> None:
    """Count a dataset's images per diagnosis (and split / difficulty), after decoding every image once."""
    manifest = plugins.get_dataset(name).manifest(root, **parse_pairs(option))
    _decode_all(manifest["path"].astype(str).tolist(), quiet=as_json)
    counts = {column: {str(k): int(v) for k, v in manifest[column].value_counts().items()}
              for column in ("diagnosis", "source_label", "split", "difficulty")
              if column in manifest and manifest[column].notna().any() and _tells_more(manifest, column)}
    lesions = int(manifest["lesion_id"].nunique()) if "lesion_id" in manifest and manifest["lesion_id"].notna().any() \
        else None
    if as_json:
        print_json({"dataset": name, "images": len(manifest), "lesions": lesions, "counts": counts})
        return
    console.print(f"[bold]{name}[/bold]: {len(manifest)} images, every one decoded", highlight=False)
    for column, values in counts.items():
        shown = table(f"per {column}", (column, "images"), right=("images",))
        for value, count in values.items():
            shown.add_row(value, str(count))
        console.print(shown)
    if lesions is not None:
        console.print(f"{lesions} lesions")


def _tells_more(manifest, column: str) -> bool:
    """A source label is shown only where it splits a diagnosis (PH2's atypical nevi), not where it renames one."""
    return column != "source_label" or manifest[column].nunique() > manifest["diagnosis"].nunique()


def _decode_all(files: list[str], quiet: bool) -> None:
    """Decode every image as extraction will (a truncated or empty file fails here, not an hour into a run)."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.images import check_image

    with ThreadPoolExecutor() as pool, Progress(console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("decoding every image", total=len(files))
        errors = []
        for error in pool.map(check_image, files):
            progress.advance(task)
            if error:
                errors.append(error)
    if errors:
        raise BenchError(f"{len(errors)} of {len(files)} image(s) cannot be decoded: {few(errors, 5)}. Replace or "
                         "remove them (or pass --skip-bad to `bench extract`)")


def _show(rows: list[dict], title: str, as_json: bool, right: tuple[str, ...] = ()) -> None:
    """Rows as one JSON list, or as a table with a column per key."""
    if as_json:
        print_json(rows)
        return
    shown = table(title, list(rows[0]) if rows else [], right=right)
    for row in rows:
        shown.add_row(*(("yes" if v else "no") if isinstance(v, bool) else str(v) for v in row.values()))
    console.print(shown)
