"""The markdown leaderboard rendered from the results table."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError
from bench.evaluate.leaderboard import render

runner = CliRunner()


def fold_rows(backbone: str, aucs: list[float], protocol: str = "mela-vs-ben", finetuned: bool = False,
              ci: tuple[float, float] = (0.80, 0.90)) -> pd.DataFrame:
    n = len(aucs)
    return pd.DataFrame({
        "dataset": "ham10000", "protocol": protocol, "backbone": backbone, "finetuned": finetuned, "split": "5x2",
        "fold": [f"r{i // 2}f{i % 2}" for i in range(n)], "auc": aucs, "map": 0.5, "acc": 0.8, "se": 0.4,
        "sp": 0.9, "bacc": 0.65, "n_train": 100, "n_test": 100, "c": 1.0, "auc_ci_low": ci[0], "auc_ci_high": ci[1],
        "command": f"bench evaluate --protocol {protocol} --dataset ham10000 --backbone {backbone}"})


def test_markdown_tables_sorted_by_auc_with_pivot_and_commands(tmp_path):
    results = pd.concat([
        fold_rows("vgg-m", [0.70, 0.72]),
        fold_rows("efficientnet-lite0", [0.84, 0.86], ci=(0.831, 0.869)),
        fold_rows("vgg-m", [0.80, 0.81], finetuned=True),
        fold_rows("retino", [0.60, 0.62], protocol="mal-vs-ben"),
        fold_rows("my-plugin", [0.75, 0.75], protocol="mal-vs-ben"),
    ], ignore_index=True)
    out = render(results, tmp_path / "README.md", note="Real results on HAM10000.")
    text = out.read_text()
    assert text.startswith("# Leaderboard") and "Real results on HAM10000." in text
    mela = text[text.index("## ham10000 · mela-vs-ben"):text.index("## ham10000: transfer")]
    rows = [line for line in mela.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| efficientnet-lite0 | no | 5x2 | 85.0 ± 1.4 | 83.1–86.9 | 50.0 ± 0.0 | 80.0 ± 0.0 | 40.0 ± 0.0 | "
        "90.0 ± 0.0 | 65.0 ± 0.0 | 2 |",
        "| vgg-m | yes | 5x2 | 80.5 ± 0.7 | 80.0–90.0 | 50.0 ± 0.0 | 80.0 ± 0.0 | 40.0 ± 0.0 | 90.0 ± 0.0 | "
        "65.0 ± 0.0 | 2 |",
        "| vgg-m | no | 5x2 | 71.0 ± 1.4 | 80.0–90.0 | 50.0 ± 0.0 | 80.0 ± 0.0 | 40.0 ± 0.0 | 90.0 ± 0.0 | "
        "65.0 ± 0.0 | 2 |",
    ]
    assert "- `bench evaluate --protocol mela-vs-ben --dataset ham10000 --backbone efficientnet-lite0`" in mela
    assert text.index("## ham10000 · mal-vs-ben") < text.index("## ham10000 · mela-vs-ben")
    pivot = text[text.index("## ham10000: transfer"):].splitlines()
    header = pivot[2].split(" | ")
    mela_vgg = next(line for line in pivot if line.startswith("| mela-vs-ben | vgg-m |")).split(" | ")
    assert mela_vgg[header.index("ImageNet no FT")] == "71.0" and mela_vgg[header.index("ImageNet FT")] == "80.5"
    retino = next(line for line in pivot if line.startswith("| mal-vs-ben | vgg-m |")).split(" | ")
    assert retino[header.index("Retinopathy no FT")] == "61.0"
    assert "my-plugin" not in "\n".join(pivot)  # no known transfer source: not in the paper's layout
    assert "![ROC" not in text  # no predictions, no curves


@pytest.mark.parametrize("dataset, png", [("ham10000", "roc-ham10000-mela-vs-ben.png"),
                                          ("ham10000 -> ph2", "roc-ham10000-to-ph2-mela-vs-ben.png")])
def test_roc_curves_are_drawn_next_to_the_markdown_and_linked(tmp_path, dataset, png):
    """An external target's figure is named without its space and arrow, so the markdown link resolves."""
    rng = np.random.default_rng(0)
    results = fold_rows("efficientnet-lite0", [0.85, 0.86]).assign(dataset=dataset)
    labels = (np.arange(200) % 5 == 0).astype(int)
    predictions = pd.concat([pd.DataFrame({
        "dataset": dataset, "protocol": "mela-vs-ben", "backbone": "efficientnet-lite0", "finetuned": False,
        "split": "5x2", "fold": fold, "image_id": [f"i{i}" for i in range(200)], "label": labels,
        "score": labels + rng.normal(size=200)}) for fold in ("r0f0", "r0f1")], ignore_index=True)
    (tmp_path / "results.csv").write_text(results.to_csv(index=False))
    (tmp_path / "pred.csv").write_text(predictions.to_csv(index=False))
    out = runner.invoke(app, ["leaderboard", "--results", str(tmp_path / "results.csv"), "--predictions",
                              str(tmp_path / "pred.csv"), "--out", str(tmp_path / "board" / "README.md")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "board" / "README.md").read_text()
    assert f"![ROC curves, {dataset} mela-vs-ben]({png})" in text
    assert (tmp_path / "board" / png).read_bytes()[:4] == b"\x89PNG"


def test_leaderboard_without_results_says_how_to_make_them(tmp_path):
    out = runner.invoke(app, ["leaderboard", "--results", str(tmp_path / "none.csv")])
    assert isinstance(out.exception, BenchError) and "bench evaluate" in str(out.exception)
