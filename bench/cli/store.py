"""`bench store ls` and `bench store rm`: what the feature store holds, and removing one set."""

from __future__ import annotations

from rich.table import Table

from bench import paths
from bench.cli.app import console, store_app
from bench.cli.extract import StoreOption


@store_app.command("ls")
def ls(store: StoreOption = None) -> None:
    """List the feature sets: dataset, backbone, key, size, completeness, model and date."""
    from featurestore import FeatureStore

    store = store or paths.default_store()
    infos = FeatureStore(store).list()
    if not infos:
        console.print(f"{store} holds no feature sets (make one with `bench extract`)", highlight=False)
        return
    table = Table(title=f"Feature sets in {store}")
    for column in ("dataset", "backbone", "key", "n", "d", "complete", "skipped", "model sha256", "created"):
        table.add_column(column, justify="right" if column in ("n", "d", "skipped") else "left")
    for i in infos:
        complete = "yes" if i.complete else f"[yellow]{i.chunks_done}/{i.chunks} chunks[/yellow]"
        table.add_row(i.dataset, i.backbone, i.key, str(i.n - i.skipped), str(i.d), complete, str(i.skipped),
                      i.model_sha256[:12], i.created)
    console.print(table)


@store_app.command("rm")
def rm(dataset: str, backbone: str, key: str, store: StoreOption = None) -> None:
    """Remove one feature set (e.g. `bench store rm ham10000 efficientnet-lite0 frozen`)."""
    from featurestore import FeatureStore

    store = store or paths.default_store()
    FeatureStore(store).remove(dataset, backbone, key)
    console.print(f"removed {dataset}/{backbone}/{key} from {store}", highlight=False)
