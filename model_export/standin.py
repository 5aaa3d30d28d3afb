"""A trained-like stand-in for the CardiffNLP model: random weights reshaped where it matters.

Random weights give near-uniform outputs (every probability near 0.5, every text alike), which
hides quantisation error: an int8 graph can be 0.01 off everywhere and still look perfect. Two
properties of a trained RoBERTa make int8 hard, and the stand-in gives them to random weights:

* **Outlier features.** Pretrained RoBERTa's LayerNorms have a few hidden dimensions (77 and
  588 in roberta-base) whose gamma is an order of magnitude larger than the rest, so every
  LayerNorm output carries two channels about 15x larger than the others. Dynamic int8
  quantises each activation tensor with one scale, set by those two channels, and the other
  766 lose most of their resolution. Here: every LayerNorm gamma x15 on dims 77 and 588.
* **A spread classifier.** A trained head gives probabilities from near 0 to near 1, so an
  error in the sentence vector shows in the probabilities. Here the classifier's last layer
  is scaled as a whole so the probabilities span 0.04-0.995 on chat texts (calibrated
  through the fp32 graph, `calibrate_head`). With it, the int8 bundle of the earlier export
  is off by a mean |dp| of about 0.015 and a max of about 0.07 (on random weights: a ninth).

The stand-in is a *proxy*: parity on it says the export handles outliers and sharp outputs;
the real export's own parity check (on the CardiffNLP weights, same texts, same tolerance) is
the truth. `build_stand_in_source` writes an ordinary Hugging Face directory that
`export_bundle` reads like any other model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from agent.errors import ExportError

STAND_IN_MODEL_ID = "captaflow/trained-like-stand-in"
STAND_IN_SMALL_MODEL_ID = "captaflow/trained-like-stand-in-small"
STAND_IN_LABEL = "trained-like stand-in"
STAND_IN_SMALL_LABEL = "trained-like stand-in (small)"

OUTLIER_DIMS: tuple[int, ...] = (77, 588)
OUTLIER_GAMMA = 15.0
PROBABILITY_SPAN = (0.04, 0.995)

# The small variant (for tests): roberta-base's width, so dims 77 and 588 exist and every
# MatMul has the real shapes, but two layers and the tiny chat tokenizer, so the export runs
# in seconds.
SMALL_SHAPE: dict[str, int] = {
    "num_hidden_layers": 2,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
WEIGHTS_FILE = "model.safetensors"
SMALL_VOCAB_SIZE = 1000

# (source directory, texts) -> what the classifier head reads for each text (texts x
# hidden), computed by the export's own fp32 stage.
HeadInputs = Callable[[Path, Sequence[str]], np.ndarray]


def _load(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ExportError(f"{path} is missing: the stand-in needs safetensors weights")
    return dict(load_file(str(path)))


def _save(directory: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        str(directory / WEIGHTS_FILE),
        metadata={"format": "pt"},
    )


def _head_names(tensors: dict[str, np.ndarray]) -> tuple[str, str]:
    for weight, bias in (
        ("classifier.out_proj.weight", "classifier.out_proj.bias"),
        ("classifier.weight", "classifier.bias"),
    ):
        if weight in tensors and bias in tensors:
            return weight, bias
    raise ExportError("the stand-in source has no classifier layer (classifier.out_proj)")


def spread_affine(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (scale, shift) for all labels mapping `logits` (texts x labels) onto the span.

    The classifier is scaled as a whole, not per label: the smallest probability over all
    texts and labels becomes PROBABILITY_SPAN[0], the largest PROBABILITY_SPAN[1]. Scaling
    per label (centring each on its mean) would stretch the text-to-text variation of a
    random model, which is tiny, by a factor no trained head has, and with it any noise.
    """
    z = np.asarray(logits, dtype=np.float64)
    lo_p, hi_p = PROBABILITY_SPAN
    lo, hi = np.log(lo_p / (1 - lo_p)), np.log(hi_p / (1 - hi_p))
    width = float(z.max() - z.min()) or 1.0
    gain = (hi - lo) / width
    shift = lo - gain * float(z.min())
    return np.full(z.shape[1], gain), np.full(z.shape[1], shift)


def calibrate_head(directory: Path, features: np.ndarray) -> tuple[float, float]:
    """Scale the classifier's last layer so probabilities span PROBABILITY_SPAN.

    `features` is what the head reads (the last layer's output at <s>) for the calibration
    texts, from the fp32 graph; the head is `out_proj(tanh(dense(x)))`, so its logits on
    them follow with numpy. `out_proj` is scaled as a whole (`spread_affine`): an exact
    affine change of its weights. Returns the (min, max) probability on those texts.
    """
    tensors = _load(directory)
    weight_name, bias_name = _head_names(tensors)
    hidden = np.asarray(features, dtype=np.float64)
    if "classifier.dense.weight" in tensors and "classifier.dense.bias" in tensors:
        wd = tensors["classifier.dense.weight"].astype(np.float64)
        hidden = np.tanh(hidden @ wd.T + tensors["classifier.dense.bias"].astype(np.float64))
    wo = tensors[weight_name].astype(np.float64)
    bo = tensors[bias_name].astype(np.float64)
    z = hidden @ wo.T + bo
    scale, shift = spread_affine(z)
    tensors[weight_name] = (wo * scale[:, None]).astype(np.float32)
    tensors[bias_name] = (bo * scale + shift).astype(np.float32)
    _save(directory, tensors)
    p = 1.0 / (1.0 + np.exp(-(z * scale + shift)))
    return float(p.min()), float(p.max())


def head_input_name(model_path: Path, source_dir: Path) -> str:
    """The tensor of the fp32 ONNX graph at `model_path` that the classifier head reads.

    Found by value, not by name, so any exporter's graph will do: the input of the node
    whose weight is `classifier.dense.weight` (as stored, or transposed for a MatMul).
    """
    import onnx
    from onnx import numpy_helper

    tensors = _load(source_dir)
    target = tensors.get("classifier.dense.weight")
    if target is None:
        target = tensors[_head_names(tensors)[0]]
    model = onnx.load(str(model_path))
    matches = set()
    for init in model.graph.initializer:
        if tuple(init.dims) in (target.shape, target.shape[::-1]):
            value = numpy_helper.to_array(init)
            if (value.shape == target.shape and np.array_equal(value, target)) or (
                value.shape == target.shape[::-1] and np.array_equal(value.T, target)
            ):
                matches.add(init.name)
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in matches:
            return str(node.input[0])
    raise ExportError(f"{model_path} has no node reading classifier.dense.weight")


def outlier_transform(name: str, array: np.ndarray) -> np.ndarray:
    """hfdir's weight hook: LayerNorm gamma x OUTLIER_GAMMA on OUTLIER_DIMS, the rest as is."""
    if name.endswith("LayerNorm.weight") and array.ndim == 1:
        if array.shape[0] <= max(OUTLIER_DIMS):
            raise ExportError(
                f"{name} has {array.shape[0]} dims; the stand-in needs at least "
                f"{max(OUTLIER_DIMS) + 1} (roberta-base's width)"
            )
        array = array.copy()
        array[list(OUTLIER_DIMS)] *= np.float32(OUTLIER_GAMMA)
    return array


def _build_small(directory: Path, seed: int, max_length: int, texts: Sequence[str]) -> None:
    from model_export.hfdir import (
        ROBERTA_POSITION_OFFSET,
        roberta_config,
        train_byte_level_bpe,
        write_config,
        write_random_weights,
        write_tokenizer_files,
    )
    from model_export.parity_texts import PARITY_TEXTS

    vocab, merges = train_byte_level_bpe([*texts, *PARITY_TEXTS], vocab_size=SMALL_VOCAB_SIZE)
    write_tokenizer_files(directory, vocab, merges, max_length)
    config = roberta_config(
        vocab_size=len(vocab),
        max_position_embeddings=max_length + ROBERTA_POSITION_OFFSET,
        num_hidden_layers=SMALL_SHAPE["num_hidden_layers"],
        hidden_size=SMALL_SHAPE["hidden_size"],
        num_attention_heads=SMALL_SHAPE["num_attention_heads"],
        intermediate_size=SMALL_SHAPE["intermediate_size"],
    )
    write_config(directory, config)
    write_random_weights(directory, config, seed, outlier_transform)


def build_stand_in_source(
    directory: Path,
    seed: int = 0,
    *,
    small: bool = False,
    max_length: int = 128,
    head_inputs: HeadInputs,
    calibration_texts: Sequence[str],
) -> Path:
    """Build the trained-like stand-in in `directory` (a Hugging Face model directory).

    `small`: two layers at roberta-base's width with the tiny tokenizer (tests); otherwise
    roberta-base's full shape with GPT-2's BPE (benchmarks). `head_inputs(directory, texts)`
    runs the export's own fp32 stage on a source directory, so the head is calibrated on what
    the graph computes, not on a second implementation.
    """
    from model_export.tiny import build_random_base_source

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if small:
        _build_small(directory, seed, max_length, calibration_texts)
    else:
        build_random_base_source(
            directory, seed, max_length=max_length, transform=outlier_transform
        )
    calibrate_head(directory, head_inputs(directory, calibration_texts))
    return directory
