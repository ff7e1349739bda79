"""`bench perf export`: seconds to export a backbone to ONNX, the first model of an architecture and size (the
graph is exported) and the next ones (their weights are put into the cached graph)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench import plugins
from bench.backbone import save_checkpoint
from bench.extract.export import export_onnx


def measure(backbone_name: str, size: int | None = None, models: int = 3) -> dict:
    """Export `models` checkpoints of the backbone, each with other weights, into an empty ONNX cache; the first
    pays for the graph, the rest show what every further fine-tune of the same architecture and size costs.

    The weights are the architecture's own random initialisation, perturbed per model: only time is measured."""
    backbone = plugins.get_backbone(backbone_name)
    preprocessing = backbone.preprocessing.with_size(size or backbone.preprocessing.size)
    load = os.getloadavg()[0]
    net = backbone.build().eval()
    seconds = []
    # an empty ONNX cache in a temporary home; the user's is left untouched
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        for i in range(models):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            checkpoint = save_checkpoint(Path(tmp) / f"model-{i}.pt", net, backbone.name, preprocessing)
            start = time.perf_counter()
            model = export_onnx(backbone, checkpoint, home=Path(tmp))
            seconds.append(time.perf_counter() - start)
            parity = model.parity_max_abs_diff
    return {"backbone": backbone.name, "image_size": preprocessing.size, "models": models,
            "first_s": round(seconds[0], 2), "next_s": [round(s, 2) for s in seconds[1:]],
            "parity_max_abs_diff": parity, "load_average_1min_before": round(load, 2), "cpus": os.cpu_count()}

