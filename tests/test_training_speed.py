"""What keeps training near the hardware's rate: images decoded once per image list and size, and the
`bench perf train` figures that show the loop beside its ceilings."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from bench.perf import train as perf_train
from bench.train import loop
from bench.backbone import Preprocessing
from bench.errors import BenchError
from bench.train.recipes import get_recipe


@pytest.fixture
def files(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_images_are_decoded_once_per_list_and_size_until_a_file_changes(files, monkeypatch):
    first = loop.decode(files, 16, torch.device("cpu"))
    assert first.shape == (3, 3, 16, 16) and first.dtype == torch.uint8
    decoded = []
    monkeypatch.setattr(Preprocessing, "load",
                        lambda self, path: decoded.append(path) or np.zeros((self.size, self.size, 3), np.uint8))
    assert torch.equal(loop.decode(files, 16, torch.device("cpu")), first) and not decoded

    loop.decode(files, 8, torch.device("cpu"))  # another size
    loop.decode(files[:2], 16, torch.device("cpu"))  # another list
    loop.decode(files, 16, torch.device("cpu"), Preprocessing(resize_mode="shorter-side"))  # another resize
    stat = os.stat(files[2])
    os.utime(files[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the same pixels
    loop.decode(files, 16, torch.device("cpu"))
    assert decoded == files + files[:2] + files


def test_a_missing_image_is_named(files):
    os.remove(files[1])
    with pytest.raises(BenchError, match=f"cannot read {files[1]}: .* Restore the file"):
        loop.decode(files, 16, torch.device("cpu"))


def test_perf_train_measures_the_loop_and_its_ceilings_on_the_same_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    recipe = get_recipe("cpu").with_overrides(image_size=16, batch_size=4, train_last=1)
    figures = perf_train.measure(net, 6, Preprocessing(size=16), recipe, steps=1)
    for key in ("forward_ips", "loop_head_ips", "forward_backward_ips", "loop_ips"):
        assert figures[key] > 0
    assert (figures["threads"], figures["image_size"], figures["batch_size"]) == (torch.get_num_threads(), 16, 4)
