"""Fusion and quantisation pre-processing that leave the weights on disk.

onnxruntime's transformer optimizer and `quant_pre_process` load a whole model into one
protobuf and copy it several times (shape inference, a temporary save and reload): for
roberta-base's 500 MB of weights the fusion alone peaked at 3.2 GB and the pre-processing
at 2.3 GB. Neither needs the weights' values, only their names and shapes, and the few
tensors a fusion reads (the query/key/value weights it concatenates into one Attention
weight) it reads through `onnx.numpy_helper.to_array`, which opens an external tensor's
file relative to the working directory.

So when a graph keeps its weights in an external data file (the light path's
`model.fp32.onnx` + `.data`), these functions load the graph without the weights, run the
same onnxruntime code with the working directory at the data file, and save the result next
to the input, where its untouched tensors keep pointing into the same data file. The output
is the same graph, tensor for tensor, as the ordinary calls give (tested); for a graph with
its weights inside, or an output in another directory, they are the ordinary calls.

    fused = fuse_bert(fp32, work / "model.fused.onnx", model_type="bert", num_heads=12, ...)
    pre_process(work / "model.fused.onnx", work / "model.prepared.onnx", skip_optimization=True)
    quantize_dynamic(work / "model.prepared.onnx", out / "model.onnx", weight_type=...)

`quantize_dynamic` must hold the weights it quantises, but onnxruntime's dynamic quantizer also
deep-copies the whole model, saves the copy and loads it back only to refresh the shape
annotations (`save_and_reload_model_with_shape_infer`, three copies at once: its peak was
1.5 GB above the model's own 0.5 GB); here that refresh runs on the graph's structure alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def has_external_data(model_path: Path) -> bool:
    """Whether any initializer of the graph at `model_path` lives in an external file."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)


def _lean(model_path: Path, out_path: Path) -> bool:
    return Path(out_path).resolve().parent == Path(model_path).resolve().parent and (
        has_external_data(model_path)
    )


@contextlib.contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def _weightless(model_path: Path) -> Any:
    import onnx

    return onnx.load(str(model_path), load_external_data=False)


def fuse_bert(model_path: Path, out_path: Path, **optimize_options: Any) -> Any:
    """`onnxruntime.transformers.optimizer.optimize_model(model_path, **optimize_options)`
    saved to `out_path`; returns the optimizer (for `get_fused_operator_statistics`).

    Lean (weights left on disk) when the graph's weights are external and `out_path` is
    beside it. Only the Python fusions can run so (opt_level 0): an onnxruntime pass
    (opt_level >= 1) needs the weights in memory, so it takes the ordinary path.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model_path, out_path = Path(model_path).resolve(), Path(out_path).resolve()
    if optimize_options.get("opt_level") != 0 or not _lean(model_path, out_path):
        optimized = optimize_model(str(model_path), **optimize_options)
        optimized.save_model_to_file(str(out_path))
        return optimized
    model = _weightless(model_path)
    with _working_directory(model_path.parent):
        optimized = optimize_model(model, **optimize_options)
        optimized.save_model_to_file(str(out_path))
    return optimized


def pre_process(
    model_path: Path, out_path: Path, *, skip_optimization: bool, auto_merge: bool = False
) -> None:
    """`onnxruntime.quantization.quant_pre_process(model_path, out_path, ...)`.

    Lean when the weights are external, `out_path` is beside the graph and the onnxruntime
    optimisation is skipped: the same symbolic then ONNX shape inference on the graph without
    its weights, and the same pre-processing mark in the metadata.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    model_path, out_path = Path(model_path).resolve(), Path(out_path).resolve()
    if not skip_optimization or not _lean(model_path, out_path):
        quant_pre_process(
            str(model_path),
            str(out_path),
            skip_optimization=skip_optimization,
            auto_merge=auto_merge,
        )
        return
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = _weightless(model_path)
    with _working_directory(model_path.parent):
        model = SymbolicShapeInference.infer_shapes(model, 2**31 - 1, auto_merge, False, 0)
        model = onnx.shape_inference.infer_shapes(model)
        add_pre_process_metadata(model)
        onnx.save(model, str(out_path))


# Tensors at least this large are left out of the structural copy shape inference reads.
_STRUCTURE_BYTES = 1 << 16


def _structure_only(model: Any) -> Any:
    """A copy of `model` whose large initializers carry type and dims but no data (marked
    external, as shape inference expects of tensors it need not read)."""
    import onnx

    skeleton = onnx.ModelProto()
    graph = model.graph
    kept = onnx.GraphProto()
    for field in ("name", "doc_string"):
        setattr(kept, field, getattr(graph, field))
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(kept, field).extend(getattr(graph, field))
    for tensor in graph.initializer:
        if tensor.ByteSize() < _STRUCTURE_BYTES:
            kept.initializer.append(tensor)
            continue
        stub = kept.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", "weights-not-read-by-shape-inference"
    for field, value in model.ListFields():
        if field.name == "graph":
            continue
        if hasattr(value, "extend"):  # a repeated field (opset_import, metadata_props, ...)
            getattr(skeleton, field.name).extend(value)
        else:
            setattr(skeleton, field.name, value)
    skeleton.graph.CopyFrom(kept)
    return skeleton


def _refresh_shapes(model: Any) -> Any:
    """What `save_and_reload_model_with_shape_infer(model)` returns (the model with ONNX shape
    inference's value_info and onnxruntime's "inferred" mark), without copying its weights."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    inferred = onnx.shape_inference.infer_shapes(_structure_only(model))
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    add_infer_metadata(model)
    return model


def quantize_dynamic(model_input: Path, model_output: Path, **options: Any) -> None:
    """`onnxruntime.quantization.quantize_dynamic(model_input, model_output, **options)`,
    with the quantizer's shape refresh done on the graph's structure instead of a deep copy
    saved and reloaded (the same int8 graph, tested)."""
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = _refresh_shapes
    try:
        ort_quantize_dynamic(str(model_input), str(model_output), **options)
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original


__all__ = ["fuse_bert", "has_external_data", "pre_process", "quantize_dynamic"]
