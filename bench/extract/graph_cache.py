"""The graph cache: a network's exported ONNX graph by architecture and input size, kept without its weights.

A graph depends on the architecture and the input size, not on the weights, so it is exported once per
architecture and size (seconds to tens of seconds) and every further model of it is this graph with its own
weights put in (a fraction of a second). Only a graph whose every state-dict tensor is an initializer of the same
name, shape and type can be kept (`takes_weights`); `bench.extract.export` also checks that it still matches torch
given other weights before keeping it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench import atomic

if TYPE_CHECKING:  # onnx and torch are imported where a graph is read or keyed
    import onnx
    from torch import nn

OPSET = 18  # the ONNX opset every graph is exported at: part of every cache key of an exported model


def graph_path(net: nn.Module, size: int | tuple[int, ...], graphs: Path) -> Path:
    """Where the graph of `net`'s architecture is kept in the folder `graphs`, for `size` x `size` pixel images (or
    inputs of shape `size`)."""
    return graphs / f"{architecture_key(net, size)}.onnx"


def architecture_key(net: nn.Module, size: int | tuple[int, ...]) -> str:
    """What an exported graph depends on: the module tree (classes and their settings), the state dict's names,
    shapes and types, the input size and the exporter's versions; not the weights' values."""
    import onnx
    import torch

    tensors = [(k, str(v.dtype), tuple(v.shape)) for k, v in net.state_dict().items()]
    identity = [type(net).__module__, type(net).__qualname__, repr(net), tensors, size, OPSET, torch.__version__,
                onnx.__version__]
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]


def read(path: Path) -> onnx.ModelProto | None:
    """The kept graph at `path`; None where there is none (a damaged file is removed, so it is exported again)."""
    import onnx

    if not path.is_file():
        return None
    try:
        return onnx.load(path)
    except Exception:  # noqa: BLE001 (a truncated or damaged file of any kind is exported again)
        path.unlink()
        return None


def keep(graph: onnx.ModelProto, net: nn.Module, path: Path) -> None:
    """Keep `graph` at `path` without the net's weights (nothing to read back, or to copy); this empties them in
    `graph` too, so put weights in before using it."""
    import onnx

    names = set(weights(net))
    for init in graph.graph.initializer:
        if init.name in names:
            init.ClearField("raw_data")
    with atomic.atomic_path(path) as tmp:  # two processes keeping the same graph each leave a whole file
        onnx.save(graph, tmp)


def takes_weights(graph: onnx.ModelProto, net: nn.Module) -> bool:
    """Whether every tensor of the net is an initializer of the same name, shape and type, held as raw bytes."""
    from onnx import helper

    initializers = {t.name: t for t in graph.graph.initializer}
    for name, tensor in weights(net).items():
        init = initializers.get(name)
        if (init is None or not init.HasField("raw_data") or tuple(init.dims) != tensor.shape
                or helper.tensor_dtype_to_np_dtype(init.data_type) != tensor.dtype):
            return False
    return True


def put_weights(graph: onnx.ModelProto, net: nn.Module) -> None:
    """Give the initializers named after the net's state-dict entries the net's values, in place (little-endian
    raw bytes, as ONNX stores them)."""
    values = weights(net)
    for init in graph.graph.initializer:
        if init.name in values:
            init.raw_data = values[init.name].astype(values[init.name].dtype.newbyteorder("<"), copy=False).tobytes()


def weights(net: nn.Module) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays, less BatchNorm's step counters (training bookkeeping no graph uses)."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}
