"""`bench select`: one configuration chosen inside each fold by validation AUC, scored on its test part."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bench.cli.app import app
from bench.cli.options import Dataset, Finetuned, JsonOption, Protocol, Results, Seed, Split
from bench.cli.output import console, err_console, print_json, table
from bench.paths import DEFAULT_RESULTS


@app.command("select")
def select_command(
    candidates: Annotated[list[str], typer.Argument(help="Evaluated configurations, as the backbone column of "
                                                         "the results names them (options in brackets).")],
    protocol: Protocol,
    dataset: Dataset,
    finetuned: Finetuned = False,
    split: Split = "5x2",
    seed: Seed = 0,
    results: Results = DEFAULT_RESULTS,
    predictions: Annotated[Path, typer.Option(help="Per-image test scores written by `bench evaluate "
                                                   "--predictions`.")] = ...,
    as_json: JsonOption = False,
) -> None:
    """In each fold, the configuration with the highest validation AUC (chosen on the training part only), scored
    on that fold's test part; adds the selected pipeline's rows to the results and predictions tables."""
    from bench.evaluate.results import KEY, PREDICTION_KEY, check_writable, read_tables, upsert
    from bench.evaluate.select import command, select

    check_writable(results, predictions)
    line = command(candidates, dataset=dataset, protocol=protocol, split=split, seed=seed, finetuned=finetuned,
                   results=str(results), predictions=str(predictions))
    chosen = select(*read_tables(results, predictions), candidates, dataset=dataset, protocol=protocol,
                    split=split, seed=seed, finetuned=finetuned, command=line)
    r = chosen.results
    if as_json:
        print_json({"backbone": chosen.name, "auc": r["auc"].mean(), "ci_low": r["auc_ci_low"].iloc[0],
                    "ci_high": r["auc_ci_high"].iloc[0], "folds": chosen.choices.to_dict(orient="records")})
    else:
        shown = table(f"{dataset} · {protocol} · split {split}: chosen per fold by validation AUC",
                      ("fold", "chosen", "validation AUC", "test AUC"), right=("validation AUC", "test AUC"))
        for row in chosen.choices.itertuples():
            shown.add_row(row.fold, escape(row.chosen), f"{100 * row.validation_auc:.1f}", f"{100 * row.auc:.1f}")
        console.print(shown)
        console.print(f"{escape(chosen.name)}: AUC {100 * r['auc'].mean():.1f}, 95% CI {100 * r['auc_ci_low'].iloc[0]:.1f}–"
                      f"{100 * r['auc_ci_high'].iloc[0]:.1f} (bootstrap over test lesions)", highlight=False)
    upsert((results, r, KEY), (predictions, chosen.predictions, PREDICTION_KEY))
    err_console.print(f"{len(r)} fold rows -> {results}, predictions -> {predictions}", highlight=False)
