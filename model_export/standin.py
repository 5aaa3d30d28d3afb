"""A trained-like stand-in for the CardiffNLP model: random weights reshaped where it matters.

Random weights give near-uniform outputs (every probability near 0.5, every text alike), which
hides quantisation error: an int8 graph can be 0.01 off everywhere and still look perfect. Two
properties of a trained RoBERTa make int8 hard, and the stand-in gives them to random weights:

* **Outlier features.** Pretrained RoBERTa's LayerNorms have a few hidden dimensions (77 and
  588 in roberta-base) whose gamma is an order of magnitude larger than the rest, so every
  LayerNorm output carries two channels about 15x larger than the others. Dynamic int8
  quantises each activation tensor with one scale, set by those two channels, and the other
  766 lose most of their resolution. Here: every LayerNorm gamma x15 on dims 77 and 588.
* **A spread classifier.** A trained head turns changes of the sentence vector into
  probabilities from near 0 to near 1. Here the head is re-centred on what differs between
  texts and scaled so the probabilities span 0.04-0.995 (calibrated through the fp32 graph
  on chat texts, see `calibrate_head`), so which label is on top changes from text to text.

The stand-in is a *proxy*: parity on it says the export handles outliers and sharp outputs;
the real export's own parity check (on the CardiffNLP weights, same texts, same tolerance) is
the truth. `build_stand_in_source` writes an ordinary Hugging Face directory that
`export_bundle` reads like any other model.
"""

from __future__ import annotations

import json
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
SMALL_SHAPE = {
    "num_hidden_layers": 2,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
WEIGHTS_FILE = "model.safetensors"
import os
RECENTRE = os.environ.get("RECENTRE", "1") == "1"

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


def add_outlier_features(directory: Path) -> int:
    """Multiply every LayerNorm gamma by OUTLIER_GAMMA on OUTLIER_DIMS; returns how many."""
    tensors = _load(directory)
    changed = 0
    for name, value in tensors.items():
        if name.endswith("LayerNorm.weight") and value.ndim == 1:
            if value.shape[0] <= max(OUTLIER_DIMS):
                raise ExportError(
                    f"{name} has {value.shape[0]} dims; the stand-in needs at least "
                    f"{max(OUTLIER_DIMS) + 1} (roberta-base's width)"
                )
            scaled = value.astype(np.float32).copy()
            scaled[list(OUTLIER_DIMS)] *= OUTLIER_GAMMA
            tensors[name] = scaled
            changed += 1
    if not changed:
        raise ExportError(f"no LayerNorm weights found in {directory / WEIGHTS_FILE}")
    _save(directory, tensors)
    return changed


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


def calibrate_head(
    directory: Path, features: np.ndarray, *, recentre: bool = True
) -> tuple[float, float]:
    """Re-centre and rescale the classification head on `features` (texts x hidden).

    `features` is what the head reads (the last layer's output at <s>) for the calibration
    texts, from the fp32 graph. The head is `out_proj(tanh(dense(x)))`:
    1. `dense` is re-centred and scaled per unit so its output has mean 0 and std 1 over the
       texts: a trained head reads what differs between texts, while a random one mostly
       reads the part every text shares (<s> at position 0) and gives every text one answer;
    2. `out_proj` is scaled as a whole (`spread_affine`) so probabilities span
       PROBABILITY_SPAN over the texts.
    Both are exact affine changes of the two layers' weights. Returns (min, max) probability.
    """
    tensors = _load(directory)
    dense_w, dense_b = "classifier.dense.weight", "classifier.dense.bias"
    weight_name, bias_name = _head_names(tensors)
    x = np.asarray(features, dtype=np.float64)
    if recentre and dense_w in tensors and dense_b in tensors:
        wd = tensors[dense_w].astype(np.float64)
        bd = tensors[dense_b].astype(np.float64)
        a = x @ wd.T + bd
        mean, std = a.mean(axis=0), np.maximum(a.std(axis=0), 1e-12)
        wd, bd = wd / std[:, None], (bd - mean) / std
        tensors[dense_w], tensors[dense_b] = wd.astype(np.float32), bd.astype(np.float32)
        hidden = np.tanh(x @ wd.T + bd)
    elif dense_w in tensors and dense_b in tensors:
        wd, bd = tensors[dense_w].astype(np.float64), tensors[dense_b].astype(np.float64)
        hidden = np.tanh(x @ wd.T + bd)
    else:
        hidden = x
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
        if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            if node.input[1] in matches:
                return str(node.input[0])
    raise ExportError(f"{model_path} has no node reading classifier.dense.weight")


def write_random_roberta(directory: Path, shape: dict[str, int], seed: int) -> None:
    """Replace the model in `directory` (config + safetensors) by a random RoBERTa of `shape`.

    Initialised as transformers does (normal(0, 0.02) weights, zero biases, LayerNorm 1/0,
    the padding embedding zero), written with numpy: the tokenizer files stay as they are.
    """
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(shape)
    config["initializer_range"] = 0.02
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    rng = np.random.default_rng(seed)
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    std = 0.02

    def normal(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    words = normal(int(config["vocab_size"]), hidden)
    positions = normal(int(config["max_position_embeddings"]), hidden)
    pad = int(config.get("pad_token_id", 1))
    words[pad] = 0.0
    positions[pad] = 0.0
    t: dict[str, np.ndarray] = {
        "roberta.embeddings.word_embeddings.weight": words,
        "roberta.embeddings.position_embeddings.weight": positions,
        "roberta.embeddings.token_type_embeddings.weight": normal(
            int(config.get("type_vocab_size", 1)), hidden
        ),
        "roberta.embeddings.LayerNorm.weight": ones(hidden),
        "roberta.embeddings.LayerNorm.bias": zeros(hidden),
    }
    for i in range(shape["num_hidden_layers"]):
        p = f"roberta.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t[p + f"attention.self.{name}.weight"] = normal(hidden, hidden)
            t[p + f"attention.self.{name}.bias"] = zeros(hidden)
        t[p + "attention.output.dense.weight"] = normal(hidden, hidden)
        t[p + "attention.output.dense.bias"] = zeros(hidden)
        t[p + "attention.output.LayerNorm.weight"] = ones(hidden)
        t[p + "attention.output.LayerNorm.bias"] = zeros(hidden)
        t[p + "intermediate.dense.weight"] = normal(inter, hidden)
        t[p + "intermediate.dense.bias"] = zeros(inter)
        t[p + "output.dense.weight"] = normal(hidden, inter)
        t[p + "output.dense.bias"] = zeros(hidden)
        t[p + "output.LayerNorm.weight"] = ones(hidden)
        t[p + "output.LayerNorm.bias"] = zeros(hidden)
    labels = len(config["id2label"])
    t["classifier.dense.weight"] = normal(hidden, hidden)
    t["classifier.dense.bias"] = zeros(hidden)
    t["classifier.out_proj.weight"] = normal(labels, hidden)
    t["classifier.out_proj.bias"] = zeros(labels)
    for stale in directory.glob("*.bin"):
        stale.unlink()
    _save(directory, t)


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
    from model_export.tiny import build_random_base_source, build_tiny_source

    directory = Path(directory)
    if small:
        build_tiny_source(directory, seed, max_length=max_length)
        write_random_roberta(directory, SMALL_SHAPE, seed)
    else:
        build_random_base_source(directory, seed, max_length=max_length)
    add_outlier_features(directory)
    calibrate_head(directory, head_inputs(directory, calibration_texts), recentre=RECENTRE)
    return directory
