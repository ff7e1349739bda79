"""The options that choose where work runs, shared by `bench extract`, `bench perf extract` and `bench reproduce`."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

ExecutorOption = Annotated[Literal["local", "ray"], typer.Option(
    help="local: this process; ray: Ray tasks on a cluster (needs `pip install 'bench\\[ray]'`).")]
AddressOption = Annotated[Optional[str], typer.Option(
    help="With --executor ray: the cluster (e.g. head:6379 or ray://head:10001); default $RAY_ADDRESS, else a "
         "Ray instance started on this machine.")]
