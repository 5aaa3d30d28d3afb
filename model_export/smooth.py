"""Outlier handling for dynamic int8: SmoothQuant-style migration on the fp32 ONNX graph.

Dynamic quantisation (`DynamicQuantizeLinear`) gives each activation tensor one scale, set
by its largest value. In a trained RoBERTa every LayerNorm output carries a few channels an
order of magnitude larger than the rest (dims 77 and 588 of roberta-base), so the scale is
set by two channels and the other 766 are quantised with a step ~15x too coarse.

SmoothQuant (Xiao et al., 2023) moves that range from the activations into the weights:
for the MatMuls that read one activation X (the query/key/value projections read one
LayerNorm output; the feed-forward input reads another), per input channel j

    s_j = max|X_j| ** alpha / max|W_j,:| ** (1 - alpha)
    X @ W == (X / s) @ (diag(s) W)

with max|X_j| calibrated on chat texts through the fp32 graph. The weights absorb s (the
rows are rescaled in place; int8 weights have a per-tensor or per-column scale, so rows
that grow cost some weight resolution, which alpha trades against activation resolution).
RoBERTa is post-LayerNorm: the LayerNorm output also feeds the residual Add, so 1/s cannot
be folded into the LayerNorm's gamma without changing the residual. It is one `Mul` by a
constant vector before the MatMuls that share X: 768 multiplies per token against the
~1.8 million multiply-adds of the MatMuls it feeds.

Pure graph surgery with onnx + numpy; the calibration runs onnxruntime on the fp32 graph.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class SmoothedSite:
    """One activation whose range was migrated: which MatMuls read it and by how much."""

    activation: str
    matmuls: tuple[str, ...]
    max_activation_ratio: float  # largest channel max / median channel max, before
    after_ratio: float  # the same, after dividing by s


def _matmul_groups(model: Any, min_rows: int) -> dict[str, list[Any]]:
    """Activation name -> MatMul nodes with an initializer weight of >= min_rows rows."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    groups: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.dims[0] < min_rows:
            continue
        groups[node.input[0]].append(node)
    return groups


def activation_maxima(
    model_path: Path,
    activations: Sequence[str],
    feeds: Iterable[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Per-channel max |value| of each named activation over all `feeds` (fp32 graph).

    The graph is re-saved with the activations as extra outputs beside `model_path`, without
    its weights when they are external, so onnxruntime reads them from the same data file
    and the weights are not held in memory twice.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path), load_external_data=False)
    known = {o.name for o in model.graph.output}
    for name in activations:
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    probe = model_path.with_name(model_path.stem + ".calibration.onnx")
    with probe.open("wb") as handle:
        handle.write(model.SerializeToString())
    del model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        maxima: dict[str, np.ndarray] = {}
        for feed in feeds:
            mask = feed.get("attention_mask")
            values = session.run(list(activations), feed)
            for name, value in zip(activations, values, strict=True):
                value = np.abs(np.asarray(value, dtype=np.float32))
                if mask is not None and value.ndim == 3:
                    # Real tokens set the range the chat needs; padded rows are computed too,
                    # and DynamicQuantizeLinear sees them, but they repeat the real tokens'
                    # features.
                    value = value[mask.astype(bool)]
                flat = value.reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = np.maximum(maxima.get(name, flat), flat)
        del session
    finally:
        probe.unlink(missing_ok=True)
    return maxima


def smooth_graph(
    model_path: Path,
    out_path: Path,
    feeds: Callable[[], Iterable[dict[str, np.ndarray]]],
    alpha: float,
    *,
    min_ratio: float = 4.0,
    min_rows: int = 64,
) -> list[SmoothedSite]:
    """Migrate activation outliers of `model_path` into its MatMul weights; save `out_path`.

    Only activations whose largest channel max is at least `min_ratio` times the median
    channel max are touched (others have nothing to migrate). Returns what was done.
    """
    import onnx
    from onnx import helper, numpy_helper

    groups_only = _matmul_groups(onnx.load(str(model_path), load_external_data=False), min_rows)
    maxima = activation_maxima(model_path, list(groups_only), feeds())
    model = onnx.load(str(model_path))
    groups = _matmul_groups(model, min_rows)
    inits = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            consumers[name] += 1
    sites: list[SmoothedSite] = []
    new_nodes: list[tuple[Any, Any]] = []
    for activation, nodes in groups.items():
        x_max = np.maximum(maxima[activation].astype(np.float64), 1e-5)
        ratio = float(x_max.max() / np.median(x_max))
        if ratio < min_ratio:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in nodes]
        if any(w.shape[0] != x_max.shape[0] for w in weights):
            continue
        if any(consumers[n.input[1]] != 1 for n in nodes):
            continue  # a shared weight cannot be rescaled for one reader only
        w_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
        s = x_max**alpha / w_max ** (1.0 - alpha)
        s = s / np.exp(np.mean(np.log(s)))  # geometric mean 1: weights keep their size
        for node, w in zip(nodes, weights, strict=True):
            init = inits[node.input[1]]
            init.CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), init.name))
        inv_name = f"{activation}_smooth_inv"
        smoothed = f"{activation}_smoothed"
        model.graph.initializer.append(
            numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name)
        )
        mul = helper.make_node(
            "Mul", [activation, inv_name], [smoothed], name=f"SmoothQuantMul_{len(sites)}"
        )
        for node in nodes:
            node.input[0] = smoothed
        new_nodes.append((nodes[0], mul))
        after = x_max / s
        sites.append(
            SmoothedSite(
                activation=activation,
                matmuls=tuple(n.name for n in nodes),
                max_activation_ratio=round(ratio, 2),
                after_ratio=round(float(after.max() / np.median(after)), 2),
            )
        )
    # Each Mul goes right before the first MatMul that reads it (graph stays topological).
    order = list(model.graph.node)
    for first, mul in new_nodes:
        order.insert(order.index(first), mul)
    del model.graph.node[:]
    model.graph.node.extend(order)
    # Weights in a data file beside the graph (as the light path's fp32 graph has them), so
    # quantisation's pre-processing can work on the graph without copying the weights.
    data = out_path.with_name(out_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(
        model,
        str(out_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return sites
