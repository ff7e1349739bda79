"""How commands print: rich tables that never cut a name or a number, and `--json` for scripts.

When stdout is not a terminal (a pipe, a file), rich would lay everything out for 80 columns and cut what does
not fit; there, lines are as long as their content instead. In a terminal, cells fold onto further lines rather
than end in an ellipsis.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

UNLIMITED = 100_000  # columns: wide enough that no row is ever laid out to fit


def _console(stream) -> Console:
    return Console(stderr=stream is sys.stderr, width=None if stream.isatty() else UNLIMITED)


console = _console(sys.stdout)
err_console = _console(sys.stderr)


def table(title: str, columns: Iterable[str], right: Iterable[str] = (), **options: Any) -> Table:
    """A table whose cells fold instead of being cut; `right`: the columns of numbers, right-aligned."""
    right = set(right)
    shown = Table(title=title, **options)
    for column in columns:
        shown.add_column(column, overflow="fold", justify="right" if column in right else "left")
    return shown


def print_json(data: Any) -> None:
    """One JSON document on stdout, plain (no colour or wrapping), for `--json`. A missing number (a single fold's
    sd, a metric a design lacks) is `null`: Python's `NaN` is not JSON, and `jq` or a browser refuse it."""
    print(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
