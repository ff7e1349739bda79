"""Convert MatConvNet's `imagenet-vgg-m.mat` (the SimpleNN format of its model zoo) into a `vgg-m` checkpoint.

MatConvNet keeps filters as H x W x in x out and fully connected layers as convolutions over the whole map
(fc6: 6 x 6 x 512 x 4096); torch wants out x in x H x W, and fc6 as a matrix over the (channel, row, column)
flattening. Every layer's geometry (stride, padding, pooling, LRN parameters) is checked against our VGG-M, so
a file that would compute something else is refused rather than silently converted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch import nn

from bench.backbone import Preprocessing, save_checkpoint
from bench.errors import BenchError
from plugins.backbones.vggm import PREPROCESSING
from plugins.backbones.vggm_net import LRN, VGGM

PASSIVE = {"relu", "dropout", "softmax", "softmaxloss"}  # layers without parameters or geometry to carry over
REQUIRED = ("conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
DEFAULTS = {"stride": 1, "pad": 0}  # what MatConvNet assumes when a layer omits them


def import_vggm(mat: Path, out: Path) -> Path:
    """Convert `mat` and save it, with its input convention, as a bench checkpoint at `out`."""
    net, preprocessing = convert_vggm(mat)
    return save_checkpoint(out, net, "vgg-m", preprocessing, source=str(mat), converted_from="MatConvNet SimpleNN")


def convert_vggm(mat: Path) -> tuple[VGGM, Preprocessing]:
    """The VGG-M in `mat` (widths taken from the file) and the preprocessing it expects."""
    model = _load(mat)
    layers = model["layers"]
    missing = [name for name in REQUIRED if name not in {layer["name"] for layer in layers}]
    if missing:
        raise BenchError(f"{mat} is not a VGG-M: it has no layer(s) {', '.join(missing)}")
    convs = {layer["name"]: _filters(layer) for layer in layers if layer["type"] == "conv"}
    channels = tuple(convs[f"conv{i}"][0].shape[3] for i in range(1, 6))
    net = VGGM(channels, fc=convs["fc6"][0].shape[3])
    modules = {key.rsplit(".", 1)[-1]: (key, module) for key, module in net.named_modules() if key}
    state = {}
    last = next(i for i, layer in enumerate(layers) if layer["name"] == "fc7")
    for layer in layers[: last + 1]:  # what follows fc7 is its ReLU and the ImageNet classifier
        key, module = modules.get(layer["name"], (None, None))
        _check_geometry(mat, layer, module)
        if layer["type"] == "conv" and module is not None:
            weight, bias = convs[layer["name"]]
            state[f"{key}.weight"] = _torch_weight(weight, module)
            state[f"{key}.bias"] = torch.from_numpy(np.asarray(bias, np.float32).reshape(-1))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise BenchError(f"{mat}: the layers do not fit together as a VGG-M: {exc}") from exc
    return net.eval(), _preprocessing(model)


def _load(mat: Path) -> dict:
    if not Path(mat).is_file():
        raise BenchError(f"MatConvNet model not found: {mat}")
    try:
        model = scipy.io.loadmat(mat, simplify_cells=True)
    except Exception as exc:  # scipy raises several types for a file that is not a .mat
        raise BenchError(f"cannot read {mat} as a MatConvNet .mat file: {exc}") from exc
    if "params" in model or not isinstance(model.get("layers"), list):
        raise BenchError(f"{mat} is not a MatConvNet SimpleNN model (a `layers` cell array); DagNN files are not "
                         "supported: use imagenet-vgg-m.mat from MatConvNet's model zoo")
    return model


def _filters(layer: dict) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x in x out filters, biases); older MatConvNet files call them `filters` and `biases`."""
    weight, bias = layer["weights"] if "weights" in layer else (layer["filters"], layer["biases"])
    weight = np.asarray(weight, np.float32)
    # loading squeezes singleton dimensions away: a 1 x 1 x in x out filter bank comes back as in x out
    return (weight[None, None] if weight.ndim == 2 else weight), bias


def _torch_weight(weight: np.ndarray, module: nn.Module) -> torch.Tensor:
    oihw = np.ascontiguousarray(weight.transpose(3, 2, 0, 1))
    if isinstance(module, nn.Linear):
        # a convolution over the whole C x H x W map is a matrix over torch's flatten order (c, h, w)
        oihw = oihw.reshape(oihw.shape[0], -1)
    return torch.from_numpy(oihw)


def _check_geometry(mat: Path, layer: dict, module: nn.Module | None) -> None:
    """Refuse a layer whose computation our VGG-M would not reproduce."""
    kind, name = layer["type"], layer["name"]
    if kind in PASSIVE:
        return
    if kind == "conv" and isinstance(module, nn.Conv2d):
        expected = {"stride": module.stride[0], "pad": module.padding[0]}
    elif kind == "conv" and isinstance(module, nn.Linear):
        expected = {"stride": 1, "pad": 0}
    elif kind == "pool" and isinstance(module, nn.MaxPool2d):
        # MatConvNet pads [top bottom left right]; one extra row and column at the end = torch's ceil mode
        expected = {"method": "max", "pool": module.kernel_size, "stride": module.stride,
                    "pad": [0, 1, 0, 1] if module.ceil_mode else 0}
    elif kind in ("normalize", "lrn") and isinstance(module, nn.LocalResponseNorm):
        expected = {"param": [LRN["size"], LRN["k"], LRN["alpha"] / LRN["size"], LRN["beta"]]}
    else:
        raise BenchError(f"{mat}: layer {name!r} of type {kind!r} has no counterpart in VGG-M")
    for key, value in expected.items():
        actual = layer.get(key, DEFAULTS.get(key))
        if not _same(actual, value):
            raise BenchError(f"{mat}: layer {name} has {key} {actual}, VGG-M needs {value}")


def _same(actual, expected) -> bool:
    if isinstance(expected, str):
        return actual == expected
    a, e = np.asarray(actual, float).ravel(), np.asarray(expected, float).ravel()
    # MatConvNet writes one number for a value repeated in every direction
    return (a.size == e.size or 1 in (a.size, e.size)) and bool(np.allclose(a, e))


def _preprocessing(model: dict) -> Preprocessing:
    """RGB in 0-255 minus the per-channel mean of the file's average image (which may be a whole image)."""
    normalization = model.get("meta", {}).get("normalization") or model.get("normalization") or {}
    average = normalization.get("averageImage")
    if average is None:
        return PREPROCESSING
    mean = np.asarray(average, np.float64).reshape(-1, 3).mean(axis=0)
    return Preprocessing(size=PREPROCESSING.size, mean=tuple(float(m) for m in mean), std=PREPROCESSING.std,
                         value_range=PREPROCESSING.value_range)
