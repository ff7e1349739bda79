"""The Typer application and its command groups; each `bench/cli/*.py` module adds its commands to them."""

from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Feature store and benchmark harness for transfer learning in melanoma screening.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
perf_app = typer.Typer(help="Measure speed and memory (images/s, seconds, peak RSS).", no_args_is_help=True)
store_app = typer.Typer(help="Inspect and edit the zarr feature store.", no_args_is_help=True)
weights_app = typer.Typer(help="Import pretrained weights from other formats.", no_args_is_help=True)


@app.callback()
def _threads(threads: Annotated[Optional[int], typer.Option(
        "--threads", help="Threads per pool (torch, onnxruntime, BLAS, decoding); default: the CPUs this process "
                          "may use, or $BENCH_THREADS.")] = None) -> None:
    from bench.threads import configure

    configure(threads)


app.add_typer(perf_app, name="perf")
app.add_typer(store_app, name="store")
app.add_typer(weights_app, name="weights")
