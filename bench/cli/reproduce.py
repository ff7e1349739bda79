"""`bench reproduce` and `bench studies`: whole studies from one study file."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import get_console

from bench.cli.app import app
from bench.cli.options import AddressOption, ExecutorOption, JsonOption, parse_pairs
from bench.cli.output import console, print_json, table
from bench.errors import BenchError

DEFAULT_OUT = Path("bench-studies")


@app.command()
def reproduce(
    study: Annotated[str, typer.Argument(help="A study file (.toml) or a built-in study's name (`bench studies`).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for everything the study makes (default: bench-studies/NAME).")] = None,
    root: Annotated[list[str], typer.Option(
        "--root", help="Dataset root NAME=PATH for a dataset the study names (repeatable).")] = [],  # noqa: B006
    executor: ExecutorOption = "local",
    address: AddressOption = None,
) -> None:
    """Run every stage of a study (source training, fine-tuning, extraction, evaluation, report) in order.

    A stage already done with the same inputs is skipped, so an interrupted study resumes where it stopped and
    an unchanged one finishes at once. The report lands in OUT/report.md.
    """
    from bench.study.reproduce import reproduce as run
    from bench.study.schema import load_study
    from bench.study.workspace import Workspace

    roots = parse_pairs(root, "--root", "NAME=PATH (NAME: a dataset of the study)")
    loaded = load_study(study, {name: Path(path) for name, path in roots.items()})
    if executor == "ray":  # a missing Ray or an unreachable cluster is said before any stage starts
        from bench.study.cluster import connect

        connect(address)
    folder = out or DEFAULT_OUT / loaded.name
    from bench.evaluate.results import check_writable

    check_writable(folder / "results.csv", folder / "predictions.csv")  # before hours of training, not after
    console.print(f"[bold]study {loaded.name}[/bold] ({loaded.path}) -> {folder}", highlight=False)
    try:
        # rich's global console, which the training progress bars use too: their displays nest in the study's
        run(loaded, folder, get_console(), executor, address)
    except KeyboardInterrupt:
        raise BenchError(f"interrupted: finished stages are kept in {folder}; run the same command to resume") \
            from None
    console.print(f"[bold green]report:[/bold green] {Workspace(folder).report}", highlight=False)


@app.command()
def studies(
    name: Annotated[Optional[str], typer.Argument(help="Print this built-in study's file (to copy and edit).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the built-in studies `bench reproduce NAME` runs, or print one's study file."""
    from bench.study.schema import builtin_studies, find_study

    if name is not None:
        print(find_study(name).read_text(), end="")
        return
    rows = [{"name": study, "description": _description(path), "file": str(path)}
            for study, path in builtin_studies().items()]
    if as_json:
        print_json(rows)
        return
    shown = table("Built-in studies (bench reproduce NAME; bench studies NAME prints the file)", ("name", "description"))
    for row in rows:
        shown.add_row(row["name"], row["description"])
    console.print(shown)


def _description(path: Path) -> str:
    """The study's description, read without checking the rest (a study needing data roots is still listed)."""
    import tomllib

    try:
        return str(tomllib.loads(path.read_text()).get("description", ""))
    except tomllib.TOMLDecodeError as exc:
        return f"(unreadable: {exc})"
