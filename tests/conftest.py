"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def _shared_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(autouse=True)
def bench_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
               _shared_datasets: Path) -> Path:
    """Every test gets its own fresh BENCH_HOME, so nothing is read from or written to the user's ~/.cache/bench.

    Its `datasets/` is shared by the session: generated datasets are cached by their parameters, so a synthetic
    set drawn for one test is reused by the next instead of being drawn again.
    """
    home = tmp_path_factory.mktemp("bench-home")  # beside tmp_path, not in it: tests may list their tmp_path
    (home / "datasets").symlink_to(_shared_datasets, target_is_directory=True)
    monkeypatch.setenv("BENCH_HOME", str(home))
    return home


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` (real datasets, read-only), or a skip where this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA
