"""Third-party plugins: found through the `bench` entry-point group, isolated when broken, switchable off, and the
README's example plugins work: the backbone plugin installs as its own package and passes the README's test."""

import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

from bench import plugins

README = Path(__file__).resolve().parents[1] / "README.md"

PLUGIN = '''
from bench.backbone import Backbone, Preprocessing
from bench.hookspecs import hookimpl
from torch import nn


@hookimpl
def bench_register_backbones(register):
    register(Backbone({name!r}, "one conv", Preprocessing(size=32), "pool", 4, "random",
                      build=lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())))
'''


@pytest.fixture(autouse=True)
def fresh_plugin_manager():
    """The manager is cached per process: rebuild it around each test so installed fakes come and go."""
    plugins.plugin_manager.cache_clear()
    yield
    plugins.plugin_manager.cache_clear()


def install_fake(site: Path, distribution: str, module: str, source: str) -> None:
    """A distribution as an installer leaves it: the module plus a dist-info with an entry in the `bench` group."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path standing for site-packages; its modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(str(tmp_path))]:
        del sys.modules[name]


def test_a_plugin_is_found_through_its_entry_point(site):
    install_fake(site, "bench-fake", "bench_fake", PLUGIN.format(name="fake-net"))
    found = plugins.backbones()
    assert found["fake-net"].plugin == "bench-fake"
    assert "vgg-m" in found and found["vgg-m"].plugin.startswith("bench (built-in)")
    assert plugins.get_backbone("fake-net").create()(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_a_broken_plugin_warns_with_its_distribution_and_bench_carries_on(site):
    install_fake(site, "bench-broken", "bench_broken", "raise ImportError('needs a library that is not installed')")
    install_fake(site, "bench-fake", "bench_fake", PLUGIN.format(name="fake-net"))
    with pytest.warns(UserWarning, match="bench-broken.*needs a library that is not installed"):
        found = plugins.backbones()
    assert {"fake-net", "vgg-m", "efficientnet-lite0"} <= set(found)


def test_autoloading_can_be_turned_off(site, monkeypatch):
    install_fake(site, "bench-fake", "bench_fake", PLUGIN.format(name="fake-net"))
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD, "1")
    found = plugins.backbones()
    assert "fake-net" not in found and "vgg-m" in found


def test_a_duplicate_name_keeps_the_first_and_warns(site):
    install_fake(site, "bench-copycat", "bench_copycat", PLUGIN.format(name="vgg-m"))
    with pytest.warns(UserWarning, match="'vgg-m' from 'bench-copycat' ignored"):
        found = plugins.backbones()
    assert found["vgg-m"].plugin.startswith("bench (built-in)") and found["vgg-m"].feature_dim == 4096


def readme_blocks() -> dict[str, list[str]]:
    """The python and toml blocks of the README's `Writing a backbone plugin` section: the backbone plugin, the test
    its author adds, the dataset plugin; the backbone plugin's pyproject.toml."""
    section = README.read_text().split("## Writing a backbone plugin", 1)[1].split("\n## ", 1)[0]
    blocks = {lang: re.findall(rf"```{lang}\n(.*?)```", section, re.S) for lang in ("python", "toml")}
    assert len(blocks["python"]) == 3 and len(blocks["toml"]) == 1, "the section's examples are not as this test says"
    return blocks


@pytest.mark.slow
def test_the_readme_plugin_installs_as_a_package_and_passes_its_readme_test(tmp_path):
    blocks = readme_blocks()
    (code, check, _), (pyproject,) = blocks["python"], blocks["toml"]
    module = tomllib.loads(pyproject)["project"]["entry-points"]["bench"]
    (name,) = module.values()
    package = tmp_path / "package"
    package.mkdir()
    (package / "pyproject.toml").write_text(pyproject)
    (package / f"{name}.py").write_text(code)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "250"}
    bench = Path(sys.executable).with_name("bench")  # the console script installed beside this interpreter
    listed = subprocess.run([bench, "backbones"], env=env, capture_output=True, text=True, check=True).stdout
    assert re.search(r"tiny-cnn .* bench-tinycnn", listed), listed
    (test,) = re.findall(r"^def (test_\w+)", check, re.M)
    checked = subprocess.run([sys.executable, "-c", f"{check}\n{test}()\nprint('passed')"], env=env,
                             capture_output=True, text=True)
    assert checked.stdout.strip() == "passed", checked.stderr


def test_the_readme_dataset_plugin_gives_a_manifest(tmp_path):
    from PIL import Image

    module = types.ModuleType("bench_myclinic")
    exec(readme_blocks()["python"][2], module.__dict__)
    plugins.plugin_manager().register(module, name="bench-myclinic")
    for file in ("a1.jpg", "b2.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / file)
    (tmp_path / "labels.csv").write_text("file,diagnosis\na1.jpg,mel\nb2.jpg,nev\n")
    manifest = plugins.get_dataset("myclinic").manifest(tmp_path)
    assert manifest[["image_id", "diagnosis"]].values.tolist() == [["a1", "melanoma"], ["b2", "nevus"]]
