"""`bench store ls`, `verify` and `rm`: what the feature store holds, whether it reads back, removing one set."""

from __future__ import annotations

import dataclasses

from bench.cli.app import store_app
from bench.cli.options import JsonOption, StoreOption, store_url
from bench.cli.output import console, print_json, table


@store_app.command("ls")
def ls(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """List the feature sets: dataset, backbone, key, size, completeness, model and date."""
    from featurestore import FeatureStore, StoreError  # zarr: loaded when a store is opened

    url = store_url(store)
    found = FeatureStore(url)
    if not found.exists():
        raise StoreError(f"no feature store at {url}: check --store (or $BENCH_STORE), or make one with "
                         "`bench extract`")
    infos = found.list()
    if as_json:
        print_json([{**dataclasses.asdict(i), "complete": i.complete} for i in infos])
        return
    if not infos:
        console.print(f"{url} holds no feature sets (make one with `bench extract`)", highlight=False)
        return
    shown = table(f"Feature sets in {url}", ("dataset", "backbone", "key", "n", "d", "complete", "skipped",
                                             "model sha256", "created"), right=("n", "d", "skipped"))
    for i in infos:
        complete = "yes" if i.complete else f"[yellow]{i.chunks_done}/{i.chunks} chunks[/yellow]"
        shown.add_row(i.dataset, i.backbone, i.key, str(i.n - i.skipped), str(i.d), complete, str(i.skipped),
                      i.model_sha256[:12], i.created)
    console.print(shown)


@store_app.command("rm")
def rm(dataset: str, backbone: str, key: str, store: StoreOption = None) -> None:
    """Remove one feature set (e.g. `bench store rm ham10000 efficientnet-lite0 frozen`)."""
    from featurestore import FeatureStore

    url = store_url(store)
    FeatureStore(url).remove(dataset, backbone, key)
    console.print(f"removed {dataset}/{backbone}/{key} from {url}", highlight=False)


@store_app.command("verify")
def verify(store: StoreOption = None) -> None:
    """Read back every chunk of every set; name the damaged ones (the `bench extract` of a set recomputes them)."""
    from featurestore import FeatureStore, StoreError

    url = store_url(store)
    found = FeatureStore(url)
    if not found.exists():
        raise StoreError(f"no feature store at {url}: check --store (or $BENCH_STORE)")
    damaged = {(i.dataset, i.backbone, i.key): found.damaged(i.dataset, i.backbone, i.key) for i in found.list()}
    for (dataset, backbone, key), chunks in damaged.items():
        console.print(f"{dataset}/{backbone}/{key}: " + (f"damaged chunk(s) {chunks}" if chunks else "ok"),
                      highlight=False)
    bad = [(name, chunks) for name, chunks in damaged.items() if chunks]
    if bad:
        (dataset, backbone, key), chunks = bad[0]
        raise StoreError(f"{len(bad)} set(s) in {url} have damaged chunks (e.g. {dataset}/{backbone}/{key}: "
                         f"{chunks}): recompute exactly those with `{found.extract_command(dataset, backbone, key)}`")
