"""`bench` command line. Domain errors (BenchError, StoreError, ProtocolError) and the machine's (OSError: disk full,
permissions) become one red line and exit code 2, never a traceback."""

import sys

from rich.markup import escape

from bench import threads

threads.before_loading()  # before anything loads torch (a command may, later): OpenMP reads its settings once

from bench.cli import catalogue  # noqa: F401  (each module registers its commands on import)
from bench.cli import extract, perf_export, perf_extract, store  # noqa: F401
from bench.cli import compare, evaluate, leaderboard, perf_evaluate, select  # noqa: F401
from bench.cli import perf_train, train  # noqa: F401
from bench.cli import reproduce  # noqa: F401
from bench.cli import weights  # noqa: F401
from bench.cli.app import app
from bench.cli.output import err_console
from bench.errors import BenchError
from featurestore.errors import StoreError
from protocols.errors import ProtocolError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except (BenchError, StoreError, ProtocolError) as exc:
        _fail(str(exc))
    except OSError as exc:  # the machine's, not bench's: a full disk, a read-only folder, a vanished mount
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}. Free space or fix the permissions and run the same command again: "
              "finished work is kept")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)  # "bench[x]" is text
    sys.exit(2)
