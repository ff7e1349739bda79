"""`bench` command line. Domain errors (BenchError, StoreError, ProtocolError) become one red line and exit code 2, never a traceback."""

import sys

from rich.markup import escape

from bench import threads

threads.before_loading()  # before the imports below load torch: OpenMP reads its settings once, as it loads

from bench.cli import catalogue  # noqa: F401  (each module registers its commands on import)
from bench.cli import extract, perf_export, perf_extract, store  # noqa: F401
from bench.cli import evaluate  # noqa: F401
from bench.cli import perf_train, train  # noqa: F401
from bench.cli import reproduce  # noqa: F401
from bench.cli import weights  # noqa: F401
from bench.cli.app import app, err_console
from bench.errors import BenchError
from featurestore.errors import StoreError
from protocols.errors import ProtocolError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except (BenchError, StoreError, ProtocolError) as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)  # "bench[x]" is text
        sys.exit(2)
