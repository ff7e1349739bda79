"""`check_backbone`: the promises a backbone plugin makes, checked on the real code paths (like scikit-learn's
`check_estimator`). A plugin's test suite needs one line:

    def test_my_backbone():
        check_backbone(my_plugin.backbone())

It builds the architecture (its own initialisation: no weights are loaded or downloaded), and checks that
- the preprocessing turns uint8 images into finite float32 input of the declared size, not a constant;
- the forward pass maps (N, 3, S, S) to finite features (N, feature_dim) at any batch size;
- the parameterised layers are registered in the order the forward pass runs them, so that a recipe's
  `train_last = k` trains exactly the last k of them (bench.train.loop.freeze), and gradients reach those only;
- where it declares cut points (`Backbone.chain`), the trunk and top cut for every `train_last` compute the
  network's features (`top(trunk(x)) == net(x)`), the top holding the layers that train and the trunk none;
- with `onnx=True`, the ONNX export gives torch's features (what `bench extract` runs).
A broken promise raises AssertionError saying which, and what to fix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backbone import Backbone
from bench.train.loop import freeze, parameterised


def check_backbone(backbone: Backbone, *, size: int | None = None, onnx: bool = True) -> None:
    """Check `backbone`'s contract at input size `size` (default: its preprocessing's); see the module doc."""
    size = size or backbone.preprocessing.size
    images = _images(3, size)
    x = _check_preprocessing(backbone, images, size)
    torch.manual_seed(0)
    net = backbone.build().eval()
    _check_forward(backbone, net, x)
    _check_layer_order(backbone, net, x)
    _check_train_last(backbone, net, x)
    if backbone.chain is not None:
        _check_split(backbone, net, x)
    if onnx:
        _check_onnx(backbone, net, size)


def _images(n: int, size: int) -> np.ndarray:
    from bench.extract.export import sample_images

    return sample_images(n, size)


def _check_preprocessing(backbone: Backbone, images: np.ndarray, size: int) -> np.ndarray:
    p = backbone.preprocessing
    assert len(p.mean) == 3 and len(p.std) == 3 and all(s > 0 for s in p.std), \
        f"{backbone.name}: preprocessing mean and std need 3 values each, std > 0 (got {p.mean}, {p.std})"
    x = p.normalise(images)
    assert x.dtype == np.float32 and x.shape == (len(images), 3, size, size), \
        f"{backbone.name}: preprocessing gives {x.dtype} {x.shape}, not float32 {(len(images), 3, size, size)}"
    assert np.isfinite(x).all() and x.std() > 1e-3, \
        f"{backbone.name}: preprocessing gives non-finite or constant input: check mean, std and value_range"
    return x


def _check_forward(backbone: Backbone, net: nn.Module, x: np.ndarray) -> None:
    with torch.no_grad():
        for n in (1, len(x)):  # a batch of one catches a squeeze that drops the batch axis
            features = net(torch.from_numpy(x[:n]))
            assert tuple(features.shape) == (n, backbone.feature_dim), \
                f"{backbone.name}: forward maps {n} image(s) to {tuple(features.shape)}, not ({n}, " \
                f"{backbone.feature_dim}): fix feature_dim or the feature layer"
            assert torch.isfinite(features).all(), f"{backbone.name}: forward gives non-finite features"


def _check_layer_order(backbone: Backbone, net: nn.Module, x: np.ndarray) -> None:
    """`train_last` counts layers in registration order; that is only the forward's last layers if they agree."""
    layers = parameterised(net)
    ran: list[nn.Module] = []  # in the order of their first call (a layer may run twice)

    def record(module: nn.Module, inputs: object) -> None:
        if module not in ran:
            ran.append(module)

    # on entry, not on return: a layer holding parameters of its own and sublayers (a ConvNeXt block's layer scale)
    # is registered before them and runs before them, but returns after them
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        with torch.no_grad():
            net(torch.from_numpy(x[:1]))
    finally:
        for hook in hooks:
            hook.remove()
    names = {m: name for name, m in net.named_modules()}
    assert ran == [m for m in layers if m in ran], \
        f"{backbone.name}: layers are registered in another order than the forward runs them (forward: " \
        f"{[names[m] for m in ran][-4:]} last), so train_last would train the wrong layers: register them in order"


def _check_train_last(backbone: Backbone, net: nn.Module, x: np.ndarray) -> None:
    """`train_last = 1` trains the last parameterised layer only: gradients reach it and no frozen one."""
    layers = parameterised(net)
    frozen = freeze(net, 1)
    try:
        assert frozen == layers[:-1], f"{backbone.name}: train_last = 1 froze {len(frozen)} of {len(layers)} layers"
        net.zero_grad()
        features = net(torch.from_numpy(x))
        if features.requires_grad:  # else no trainable layer feeds the features: the assertion below says so
            features.square().mean().backward()
        last = layers[-1]
        assert all(p.grad is not None for p in last.parameters(recurse=False)), \
            f"{backbone.name}: the last registered layer ({type(last).__name__}) gets no gradient from the " \
            "features, so train_last = 1 would train nothing: end the module at the feature layer"
        assert all(p.grad is None for layer in frozen for p in layer.parameters(recurse=False)), \
            f"{backbone.name}: a frozen layer got a gradient"
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
            p.grad = None


def _check_split(backbone: Backbone, net: nn.Module, x: np.ndarray) -> None:
    """Every distinct cut (one per train_last that leaves a trunk) computes the network's features."""
    from bench.errors import BenchError
    from bench.train.trunk import split

    layers, seen = parameterised(net), set()
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
        for k in range(1, len(layers)):
            try:
                cut = split(backbone, net, k)
            except BenchError:  # k reaches the first cut point: nothing left to cache, and no larger k would
                break
            trainable = set(layers[-k:])
            top = {m for module in cut.top for m in module.modules()}
            assert trainable <= top and not any(m in trainable for t in cut.trunk for m in t.modules()), \
                f"{backbone.name}: the cut at {cut.cut} for train_last = {k} leaves a trained layer in the trunk: " \
                "fix Backbone.chain (its modules in forward order)"
            if cut.cut in seen:
                continue
            seen.add(cut.cut)
            got = cut.top(cut.trunk(torch.from_numpy(x)))
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), \
                f"{backbone.name}: top(trunk(x)) != net(x) at the cut {cut.cut}: Backbone.chain must list the " \
                "modules whose composition is the forward pass"


def _check_onnx(backbone: Backbone, net: nn.Module, size: int) -> None:
    """Export and compare with torch, as `bench extract` does (bench.extract.export checks the parity)."""
    from bench.errors import BenchError
    from bench.extract.export import export_network

    with tempfile.TemporaryDirectory() as folder:
        try:
            export_network(net, backbone, backbone.preprocessing.with_size(size), Path(folder) / "model.onnx")
        except BenchError as exc:
            raise AssertionError(f"{backbone.name}: {exc}") from exc
