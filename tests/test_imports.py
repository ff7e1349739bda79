"""The module graph: no import cycles (lazy imports included), and no torch where no network runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "plugins", "featurestore", "protocols")
HEAVY = ("torch", "torchvision", "onnxruntime", "timm")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body: at the top, in functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from bench import paths` imports the module bench.paths; `from bench.paths import home` bench.paths
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {name for name in found if name in known}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path of modules, or None."""
    state: dict[str, str] = {}  # module -> "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target]
            if target not in state and (found := visit(target, path + [module])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [])):
            return found
    return None


def test_the_module_graph_has_no_cycle_lazy_imports_included():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    assert graph["bench.study.reproduce"], "the walk found no imports: it is broken"
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["bench.cli", "bench.hookspecs", "bench.plugins"])
def test_the_cli_and_the_plugin_manager_import_no_network_library(module):
    code = (f"import sys, {module}\n"
            "from bench import plugins\n"
            "plugins.backbones(); plugins.datasets()\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == ""


def test_the_cli_choices_are_the_ones_the_modules_define():
    """`--protocol`, `--split` and `--tta` list their choices in `--help` without importing their modules."""
    from typing import get_args

    from bench.cli.options import DesignName, SplitName, TTAName
    from featurestore.keys import TTA_VIEWS
    from protocols.designs import DESIGNS
    from protocols.splits import SPLITS

    assert get_args(DesignName) == tuple(DESIGNS)
    assert get_args(SplitName) == tuple(SPLITS)
    assert get_args(TTAName) == tuple(TTA_VIEWS)


def test_no_code_sets_bench_home():
    """Settings are passed (a `Context`), not set in the environment for the code below to find."""
    offenders = [str(path.relative_to(ROOT)) for path in modules().values()
                 if "environ[\"BENCH_HOME\"]" in path.read_text() or "BENCH_HOME=" in path.read_text()]
    assert offenders == []
