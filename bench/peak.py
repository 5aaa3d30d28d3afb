"""The CPU's measured int8 and fp32 matrix-multiply peak, on one thread, through onnxruntime.

    python bench/peak.py            # prints the figures; bench/run.py imports `measure_peak`

A share of "the bound" is only as honest as the bound. Instead of a clock from /proc/cpuinfo
times an assumed ops/cycle, this runs one large matrix product through the same onnxruntime
kernels the scorer uses, on one thread, and counts what it achieves:

* int8: `DynamicQuantizeLinear` + `MatMulInteger` (what dynamic quantisation emits for every
  MatMul of the bundle), u8 activations x s8 weights, 768 x 3072 weights (roberta-base's
  feed-forward input) and 2,048 rows (a full batch); the quantisation of the activations is
  timed separately and left out of the peak, so the peak is the GEMM kernel's;
* fp32: `MatMul` of the same shape.

Rates are in CPU time of this process (the machine may be shared), best of several runs.
Which kernel family onnxruntime's MLAS picks is decided by CPUID at start-up; it is named
from /proc/cpuinfo's flags in the same order MLAS checks them (AMX, AVX-512 VNNI,
AVX-VNNI, AVX-512 core, AVX2).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROWS, INNER, COLS = 2048, 768, 3072


@dataclass(frozen=True, slots=True)
class Peak:
    int8_ops: float  # int8 multiply-adds x 2 per CPU second (GEMM only)
    fp32_flops: float
    quantize_seconds_share: float  # DynamicQuantizeLinear's share of an int8 MatMul's time
    kernel_family: str
    shape: tuple[int, int, int]

    def describe(self) -> str:
        m, k, n = self.shape
        return (
            f"measured peak on one thread: int8 {self.int8_ops / 1e9:.0f} Gop/s "
            f"(MatMulInteger u8 x s8, {m}x{k} @ {k}x{n}), fp32 {self.fp32_flops / 1e9:.0f} "
            f"GFLOP/s (MatMul, same shape); kernel family {self.kernel_family}"
        )


def cpu_flag_set() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def kernel_family(flags: set[str] | None = None) -> str:
    """The u8s8 GEMM kernel family onnxruntime's MLAS dispatches to on this CPU."""
    f = cpu_flag_set() if flags is None else flags
    if {"amx_int8", "amx_tile"} <= f:
        return "AMX (int8 tiles)"
    if "avx512_vnni" in f and {"avx512bw", "avx512vl"} <= f:
        return "AVX-512 VNNI (VPDPBUSD, 512-bit)"
    if "avx_vnni" in f:
        return "AVX-VNNI (VPDPBUSD, 256-bit)"
    if "avx512bw" in f:
        return "AVX-512 core (VPMADDUBSW, 512-bit)"
    if "avx2" in f:
        return "AVX2 (VPMADDUBSW + VPMADDWD, 256-bit)"
    return "SSE/other"


def _session(model: object) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(),  # type: ignore[attr-defined]
        options,
        providers=["CPUExecutionProvider"],
    )


def _best_cpu_seconds(run: object, feeds: dict[str, np.ndarray], repeats: int) -> float:
    run(None, feeds)  # type: ignore[operator]
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run(None, feeds)  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def measure_peak(repeats: int = 7, rows: int = ROWS) -> Peak:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(INNER, COLS), dtype=np.int8)
    x = rng.standard_normal((rows, INNER)).astype(np.float32)

    def model(nodes: list, inputs: list, outputs: list, inits: list) -> object:
        graph = helper.make_graph(nodes, "peak", inputs, outputs, initializer=inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    a_u8 = helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, INNER])
    a_zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")
    int8 = model(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])],
        [a_u8],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, COLS])],
        [numpy_helper.from_array(weights, "w"), a_zero],
    )
    quant = model(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, INNER])],
        [
            helper.make_tensor_value_info("q", TensorProto.UINT8, [rows, INNER]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("z", TensorProto.UINT8, []),
        ],
        [],
    )
    fp32 = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, INNER])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, COLS])],
        [numpy_helper.from_array(weights.astype(np.float32) / 127.0, "w")],
    )
    a = rng.integers(0, 256, size=(rows, INNER), dtype=np.uint8)
    ops = 2.0 * rows * INNER * COLS
    t_int8 = _best_cpu_seconds(_session(int8).run, {"a": a}, repeats)  # type: ignore[attr-defined]
    t_quant = _best_cpu_seconds(_session(quant).run, {"x": x}, repeats)  # type: ignore[attr-defined]
    t_fp32 = _best_cpu_seconds(_session(fp32).run, {"x": x}, max(3, repeats // 2))  # type: ignore[attr-defined]
    return Peak(
        int8_ops=ops / t_int8,
        fp32_flops=ops / t_fp32,
        quantize_seconds_share=t_quant / (t_quant + t_int8),
        kernel_family=kernel_family(),
        shape=(rows, INNER, COLS),
    )


if __name__ == "__main__":
    import os

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    peak = measure_peak()
    print(peak.describe())
    print(f"DynamicQuantizeLinear of the activations: {peak.quantize_seconds_share:.1%} of it")
