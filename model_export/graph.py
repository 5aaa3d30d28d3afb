"""RoBERTa for sequence classification as an fp32 ONNX graph, with onnx and numpy alone.

The light export path: a Hugging Face model directory (config.json, model.safetensors or
pytorch_model.bin, tokenizer files) becomes `model.onnx` without PyTorch, transformers or
optimum. Weights are streamed one tensor at a time from the checkpoint into the graph's
external data file (`model.onnx.data`), so memory holds one tensor, never the model.

The graph is written node for node the way torch's exporter writes transformers' eager
RoBERTa (what `optimum` produced before): the same inputs (`input_ids`, `attention_mask`,
int64, dynamic batch and sequence), the same output (`logits`), position ids from the
padding mask (RoBERTa numbers tokens from padding_idx + 1), the additive attention mask
`(1 - mask) * float32.min`, MatMul + Add projections, attention as
Reshape/Transpose/MatMul/Div/Add/Softmax, exact (erf) GELU, Add + LayerNormalization, and the
classification head on the first token (dense, tanh, out_proj). So onnxruntime's transformer
optimizer (`model_type="bert"`) fuses it the same way, with its default fusions (Attention,
SkipLayerNormalization, BiasGelu) and with the export's choices (MultiHeadAttention, Gelu,
LayerNormalization); tests compare the fused operator counts and the logits with the PyTorch
path, and `numpy_logits` is a second, independent implementation the export checks against.

    config = read_config(hf_dir)
    build_fp32_onnx(hf_dir, work / "model.fp32.onnx")     # + work / "model.fp32.onnx.data"
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.errors import ExportError

OPSET = 18  # what torch's exporter wrote for the optimum path
IR_VERSION = 8
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
DATA_SUFFIX = ".data"
# Tensors smaller than this stay inside model.onnx (onnx's own default threshold).
_INLINE_BYTES = 1024
# External data offsets aligned to a page, so onnxruntime can map the weights.
_ALIGN = 4096

PRODUCER = "captaflow.model_export.graph"


class _OurProducerIsFine(logging.Filter):
    """onnxruntime's optimizer warns when a graph was not made by PyTorch ("Model producer
    not matched ... specify correct --model_type"): for this graph, which is written to match
    PyTorch's export (and tested to fuse the same), the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return PRODUCER not in record.getMessage()


logging.getLogger("onnxruntime.transformers.optimizer").addFilter(_OurProducerIsFine())


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """What the graph needs of config.json (attribute names as transformers' config)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    hidden_act: str
    id2label: Mapping[int, str]
    position_embedding_type: str = "absolute"

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


def read_config(directory: Path) -> EncoderConfig:
    """The model's config.json, checked for what this graph builder supports."""
    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExportError(f"{path} is missing: the model directory is incomplete") from exc
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"cannot read {path} ({exc}): delete the directory and run again"
        ) from exc
    model_type = str(raw.get("model_type", ""))
    try:
        id2label = {int(k): str(v) for k, v in dict(raw["id2label"]).items()}
        config = EncoderConfig(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw["max_position_embeddings"]),
            type_vocab_size=int(raw.get("type_vocab_size", 1)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            pad_token_id=int(raw.get("pad_token_id", 1)),
            hidden_act=str(raw.get("hidden_act", "gelu")),
            id2label=dict(sorted(id2label.items())),
            position_embedding_type=str(raw.get("position_embedding_type") or "absolute"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"{path} lacks or garbles {exc}: it is not a transformers encoder config"
        ) from exc
    if sorted(config.id2label) != list(range(config.num_labels)):
        raise ExportError(f"{path}: id2label must number the labels 0..n-1")
    return config


def check_buildable(config: EncoderConfig, source: str) -> None:
    """Refuse what this builder does not write (the optimum path may still export it)."""
    if config.model_type not in ROBERTA_TYPES:
        raise ExportError(
            f"model {source!r} is a {config.model_type!r} model; the light export builds "
            f"RoBERTa-family graphs only: pass --via optimum"
        )
    if config.hidden_act != "gelu":
        raise ExportError(
            f"model {source!r} uses activation {config.hidden_act!r}; the light export "
            f"writes exact GELU only: pass --via optimum"
        )
    if config.position_embedding_type != "absolute":
        raise ExportError(
            f"model {source!r} uses {config.position_embedding_type!r} position embeddings; "
            f"the light export writes absolute ones only: pass --via optimum"
        )
    if config.hidden_size % config.num_attention_heads:
        raise ExportError(
            f"model {source!r}: hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_attention_heads}"
        )


# ---------------------------------------------------------------------------------------
# Reading the checkpoint one tensor at a time.


class Checkpoint:
    """Named fp32 tensors of a model directory, read one at a time, never all at once."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.directory = Path(directory)
        self._readers: dict[str, Callable[[], np.ndarray]] = {}
        index = self.directory / SAFETENSORS_INDEX
        single = self.directory / SAFETENSORS_FILE
        if single.is_file() or index.is_file():
            self.source = SAFETENSORS_FILE
            self._open_safetensors(single, index, stack)
        elif (self.directory / PYTORCH_FILE).is_file():
            self.source = PYTORCH_FILE
            self._open_pytorch_zip(self.directory / PYTORCH_FILE, stack)
        else:
            raise ExportError(
                f"{self.directory} holds no {SAFETENSORS_FILE} (nor {PYTORCH_FILE}): "
                f"download the model again"
            )

    def _open_safetensors(self, single: Path, index: Path, stack: ExitStack) -> None:
        from safetensors import safe_open

        if single.is_file():
            files = {single.name: single}
        else:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {name: self.directory / name for name in sorted(set(weight_map.values()))}
        for path in files.values():
            try:
                handle = stack.enter_context(safe_open(str(path), framework="numpy"))
            except Exception as exc:
                raise ExportError(
                    f"cannot read {path} ({exc}): the file is damaged; download it again"
                ) from exc
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                self._readers[name] = _safetensors_reader(handle, name, path)

    def _open_pytorch_zip(self, path: Path, stack: ExitStack) -> None:
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
        except zipfile.BadZipFile as exc:
            raise ExportError(
                f"{path} is not a zip-format PyTorch checkpoint (saved before torch 1.6?): "
                f"pass --via optimum"
            ) from exc
        for name, lazy in _read_torch_zip_index(archive, path).items():
            self._readers[name] = lazy

    def names(self) -> list[str]:
        return list(self._readers)

    def __contains__(self, name: str) -> bool:
        return name in self._readers

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32, checked to have `shape`."""
        for candidate in _aliases(name):
            if candidate in self._readers:
                array = self._readers[candidate]()
                break
        else:
            raise ExportError(
                f"{self.directory / self.source} has no tensor {name!r}: it is not a "
                f"RobertaForSequenceClassification checkpoint (pass --via optimum)"
            )
        if tuple(array.shape) != shape:
            raise ExportError(
                f"tensor {name!r} in {self.directory / self.source} has shape "
                f"{tuple(array.shape)}, but config.json implies {shape}: the files do not match"
            )
        return np.ascontiguousarray(array, dtype=np.float32)


def _aliases(name: str) -> Iterator[str]:
    yield name
    # Checkpoints saved by old transformers name LayerNorm parameters gamma/beta.
    if name.endswith("LayerNorm.weight"):
        yield name[: -len("weight")] + "gamma"
    if name.endswith("LayerNorm.bias"):
        yield name[: -len("bias")] + "beta"


def _safetensors_reader(handle: Any, name: str, path: Path) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        try:
            return np.asarray(handle.get_tensor(name))
        except Exception as exc:  # bf16 has no numpy dtype; a damaged file fails here too
            raise ExportError(
                f"cannot read tensor {name!r} from {path} ({exc}): the light export reads "
                f"float32/float16 safetensors; pass --via optimum"
            ) from exc

    return read


# PyTorch's zip checkpoint: `<root>/data.pkl` is a pickle whose tensors point at storages
# `<root>/data/<key>`. A restricted unpickler rebuilds lazy references to those storages
# instead of torch objects; nothing but the few names below can be loaded (no code runs).
_TORCH_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: Any


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(stride))


class _StorageType:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype


class _TorchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(_TORCH_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(key), storage_type.dtype)


def _read_torch_zip_index(
    archive: zipfile.ZipFile, path: Path
) -> dict[str, Callable[[], np.ndarray]]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ExportError(f"{path} has no data.pkl: not a PyTorch checkpoint")
    root = pickles[0][: -len("data.pkl")]
    try:
        with archive.open(pickles[0]) as handle:
            state = _TorchUnpickler(handle).load()
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise ExportError(
            f"{path} holds more than tensors ({exc}); refusing to unpickle it: pass --via optimum"
        ) from exc
    if not isinstance(state, dict):
        raise ExportError(f"{path} is not a state dict: pass --via optimum")

    def reader(ref: _TensorRef) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            raw = archive.read(f"{root}data/{ref.storage.key}")
            flat = np.frombuffer(raw, dtype=ref.storage.dtype)
            itemsize = flat.itemsize
            return np.lib.stride_tricks.as_strided(
                flat[ref.offset :],
                shape=ref.shape,
                strides=tuple(s * itemsize for s in ref.stride),
                writeable=False,
            ).copy()

        return read

    return {str(name): reader(ref) for name, ref in state.items() if isinstance(ref, _TensorRef)}


def weight_bytes(directory: Path) -> int:
    """Bytes of the checkpoint's weight files (what the export's disk check scales)."""
    directory = Path(directory)
    files = [directory / SAFETENSORS_FILE, directory / PYTORCH_FILE]
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files += [directory / name for name in set(weight_map.values())]
    return sum(path.stat().st_size for path in files if path.is_file())


@contextmanager
def open_checkpoint(directory: Path) -> Iterator[Checkpoint]:
    with ExitStack() as stack:
        yield Checkpoint(directory, stack)


# ---------------------------------------------------------------------------------------
# Writing the graph.


class _GraphWriter:
    """Nodes and initializers; large initializers go straight to the external data file."""

    def __init__(self, data_file: IO[bytes], data_name: str) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._data = data_file
        self._data_name = data_name
        self._names: set[str] = set()
        self._counter = 0

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add `array` as initializer `name`; returns the name."""
        from onnx import TensorProto, numpy_helper

        if name in self._names:
            raise ExportError(f"graph builder bug: initializer {name!r} added twice")
        self._names.add(name)
        array = np.asarray(array, order="C")  # (ascontiguousarray would make scalars 1-d)
        if array.nbytes < _INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = self._data.tell()
        pad = (-offset) % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            offset += pad
        self._data.write(array.tobytes())
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = _onnx_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self._data_name),
            ("offset", str(offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def const(self, name: str, value: Any, dtype: Any) -> str:
        """A small constant, added once however often it is asked for."""
        if name not in self._names:
            self.weight(name, np.asarray(value, dtype=dtype))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add one node with one output, named `<name>_output_0`; returns the output."""
        from onnx import helper

        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _onnx_dtype(dtype: np.dtype) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _linear_t(ckpt: Checkpoint, prefix: str, n_in: int, n_out: int) -> np.ndarray:
    """A torch Linear's weight ([out, in]) transposed for MatMul ([in, out])."""
    return np.ascontiguousarray(ckpt.get(f"{prefix}.weight", (n_out, n_in)).T)


def _layer_norm(g: _GraphWriter, ckpt: Checkpoint, x: str, prefix: str, cfg: EncoderConfig) -> str:
    h = cfg.hidden_size
    scale = g.weight(f"{prefix}.weight", ckpt.get(f"{prefix}.weight", (h,)))
    bias = g.weight(f"{prefix}.bias", ckpt.get(f"{prefix}.bias", (h,)))
    name = "/" + prefix.replace(".", "/") + "/LayerNormalization"
    return g.node(
        "LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=float(cfg.layer_norm_eps)
    )


def _dense(g: _GraphWriter, ckpt: Checkpoint, x: str, prefix: str, n_in: int, n_out: int) -> str:
    """MatMul by the transposed weight, then Add(bias, ·), as torch exports nn.Linear."""
    scope = "/" + prefix.replace(".", "/")
    weight = g.weight(f"{prefix}.weight.T", _linear_t(ckpt, prefix, n_in, n_out))
    bias = g.weight(f"{prefix}.bias", ckpt.get(f"{prefix}.bias", (n_out,)))
    product = g.node("MatMul", [x, weight], f"{scope}/MatMul")
    return g.node("Add", [bias, product], f"{scope}/Add")


def _embeddings(g: _GraphWriter, ckpt: Checkpoint, cfg: EncoderConfig) -> str:
    p, h = "roberta.embeddings", cfg.hidden_size
    scope = "/roberta/embeddings"
    pad = cfg.pad_token_id
    # Position ids: cumsum(input_ids != pad) * (input_ids != pad) + pad, as
    # transformers' create_position_ids_from_input_ids (padding keeps position `pad`).
    is_pad = g.node(
        "Equal", ["input_ids", g.const("const_pad_id", pad, np.int64)], f"{scope}/Equal"
    )
    not_pad = g.node("Not", [is_pad], f"{scope}/Not")
    mask = g.node("Cast", [not_pad], f"{scope}/Cast", to=6)  # int32
    cumsum = g.node("CumSum", [mask, g.const("const_axis_1", 1, np.int64)], f"{scope}/CumSum")
    counted = g.node("Mul", [cumsum, mask], f"{scope}/Mul")
    counted64 = g.node("Cast", [counted], f"{scope}/Cast_1", to=7)  # int64
    positions = g.node("Add", [counted64, g.const("const_pad_id", pad, np.int64)], f"{scope}/Add")

    word_table = g.weight(
        f"{p}.word_embeddings.weight", ckpt.get(f"{p}.word_embeddings.weight", (cfg.vocab_size, h))
    )
    words = g.node("Gather", [word_table, "input_ids"], f"{scope}/word_embeddings/Gather")
    # Token type 0 everywhere (CaptaFlow feeds single texts): its row, added to every token.
    token_types = ckpt.get(f"{p}.token_type_embeddings.weight", (cfg.type_vocab_size, h))
    type_row = g.weight(f"{p}.token_type_embeddings.weight[0]", token_types[0].copy())
    summed = g.node("Add", [words, type_row], f"{scope}/Add_1")
    position_table = g.weight(
        f"{p}.position_embeddings.weight",
        ckpt.get(f"{p}.position_embeddings.weight", (cfg.max_position_embeddings, h)),
    )
    placed = g.node("Gather", [position_table, positions], f"{scope}/position_embeddings/Gather")
    summed = g.node("Add", [summed, placed], f"{scope}/Add_2")
    return _layer_norm(g, ckpt, summed, f"{p}.LayerNorm", cfg)


def _additive_mask(g: _GraphWriter) -> str:
    """(1 - mask) * float32.min, shaped [batch, 1, 1, sequence], as transformers builds it."""
    one = g.node(
        "Unsqueeze",
        ["attention_mask", g.const("const_axes_1", [1], np.int64)],
        "/roberta/Unsqueeze",
    )
    two = g.node("Unsqueeze", [one, g.const("const_axes_2", [2], np.int64)], "/roberta/Unsqueeze_1")
    as_float = g.node("Cast", [two], "/roberta/Cast", to=1)
    inverted = g.node("Sub", [g.const("const_one", 1.0, np.float32), as_float], "/roberta/Sub")
    lowest = g.const("const_float_min", np.finfo(np.float32).min, np.float32)
    return g.node("Mul", [inverted, lowest], "/roberta/Mul")


def _attention(
    g: _GraphWriter, ckpt: Checkpoint, x: str, mask: str, layer: int, cfg: EncoderConfig
) -> str:
    p = f"roberta.encoder.layer.{layer}.attention"
    scope = f"/roberta/encoder/layer.{layer}/attention/self"
    h = cfg.hidden_size
    split = g.const("const_shape_heads", [0, 0, cfg.num_attention_heads, cfg.head_size], np.int64)
    merge = g.const("const_shape_hidden", [0, 0, h], np.int64)
    root = g.const("const_sqrt_head_size", math.sqrt(cfg.head_size), np.float32)

    def heads(kind: str, perm: list[int], n: int) -> str:
        projected = _dense(g, ckpt, x, f"{p}.self.{kind}", h, h)
        shaped = g.node("Reshape", [projected, split], f"{scope}/Reshape_{n}")
        return g.node("Transpose", [shaped], f"{scope}/Transpose_{n}", perm=perm)

    query = heads("query", [0, 2, 1, 3], 0)
    key = heads("key", [0, 2, 3, 1], 1)
    value = heads("value", [0, 2, 1, 3], 2)
    scores = g.node("MatMul", [query, key], f"{scope}/MatMul")
    scaled = g.node("Div", [scores, root], f"{scope}/Div")
    masked = g.node("Add", [scaled, mask], f"{scope}/Add")
    weights = g.node("Softmax", [masked], f"{scope}/Softmax", axis=-1)
    context = g.node("MatMul", [weights, value], f"{scope}/MatMul_1")
    context = g.node("Transpose", [context], f"{scope}/Transpose_3", perm=[0, 2, 1, 3])
    context = g.node("Reshape", [context, merge], f"{scope}/Reshape_3")
    projected = _dense(g, ckpt, context, f"{p}.output.dense", h, h)
    residual = g.node("Add", [projected, x], f"/roberta/encoder/layer.{layer}/attention/output/Add")
    return _layer_norm(g, ckpt, residual, f"{p}.output.LayerNorm", cfg)


def _feed_forward(g: _GraphWriter, ckpt: Checkpoint, x: str, layer: int, cfg: EncoderConfig) -> str:
    p = f"roberta.encoder.layer.{layer}"
    scope = f"/roberta/encoder/layer.{layer}/intermediate/intermediate_act_fn"
    h, i = cfg.hidden_size, cfg.intermediate_size
    sqrt_2 = g.const("const_sqrt_2", math.sqrt(2.0), np.float32)
    half = g.const("const_half", 0.5, np.float32)
    one = g.const("const_one", 1.0, np.float32)
    up = _dense(g, ckpt, x, f"{p}.intermediate.dense", h, i)
    # Exact GELU, x * (1 + erf(x / sqrt 2)) * 0.5, as torch exports nn.functional.gelu.
    erf = g.node("Erf", [g.node("Div", [up, sqrt_2], f"{scope}/Div")], f"{scope}/Erf")
    shifted = g.node("Add", [erf, one], f"{scope}/Add")
    gelu = g.node("Mul", [g.node("Mul", [up, shifted], f"{scope}/Mul"), half], f"{scope}/Mul_1")
    down = _dense(g, ckpt, gelu, f"{p}.output.dense", i, h)
    residual = g.node("Add", [down, x], f"/roberta/encoder/layer.{layer}/output/Add")
    return _layer_norm(g, ckpt, residual, f"{p}.output.LayerNorm", cfg)


def _classifier(g: _GraphWriter, ckpt: Checkpoint, x: str, cfg: EncoderConfig) -> str:
    h, n = cfg.hidden_size, cfg.num_labels
    first = g.node(
        "Gather", [x, g.const("const_index_0", 0, np.int64)], "/classifier/Gather", axis=1
    )
    dense_w = g.weight("classifier.dense.weight", ckpt.get("classifier.dense.weight", (h, h)))
    dense_b = g.weight("classifier.dense.bias", ckpt.get("classifier.dense.bias", (h,)))
    dense = g.node("Gemm", [first, dense_w, dense_b], "/classifier/dense/Gemm", transB=1)
    tanh = g.node("Tanh", [dense], "/classifier/Tanh")
    out_w = g.weight("classifier.out_proj.weight", ckpt.get("classifier.out_proj.weight", (n, h)))
    out_b = g.weight("classifier.out_proj.bias", ckpt.get("classifier.out_proj.bias", (n,)))
    from onnx import helper

    g.nodes.append(
        helper.make_node(
            "Gemm", [tanh, out_w, out_b], ["logits"], name="/classifier/out_proj/Gemm", transB=1
        )
    )
    return "logits"


def build_fp32_onnx(
    directory: Path, out_path: Path, *, config: EncoderConfig | None = None
) -> Path:
    """Write the fp32 graph of the model in `directory` to `out_path` (+ `<out_path>.data`).

    Reads the weights one tensor at a time (safetensors, or a zip-format pytorch_model.bin
    through a restricted unpickler) and writes each to the external data file at once.
    Raises ExportError naming the file or tensor that does not fit.
    """
    import onnx
    from onnx import TensorProto, helper

    directory, out_path = Path(directory), Path(out_path)
    cfg = config or read_config(directory)
    check_buildable(cfg, str(directory))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_path = out_path.with_name(out_path.name + DATA_SUFFIX)
    with open_checkpoint(directory) as ckpt, data_path.open("wb") as data:
        g = _GraphWriter(data, data_path.name)
        hidden = _embeddings(g, ckpt, cfg)
        mask = _additive_mask(g)
        for layer in range(cfg.num_hidden_layers):
            hidden = _attention(g, ckpt, hidden, mask, layer, cfg)
            hidden = _feed_forward(g, ckpt, hidden, layer, cfg)
        _classifier(g, ckpt, hidden, cfg)
    dims = ["batch_size", "sequence_length"]
    graph = helper.make_graph(
        g.nodes,
        "captaflow_roberta_classifier",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims),
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch_size", cfg.num_labels]
            )
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        ir_version=IR_VERSION,
    )
    # Saved without touching the external data: model.onnx holds only the structure.
    with out_path.open("wb") as handle:
        handle.write(model.SerializeToString())
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"graph builder bug: the graph does not validate ({exc})") from exc
    return out_path


# ---------------------------------------------------------------------------------------
# An independent check: the same forward pass in numpy, straight from the checkpoint.


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-7 (Abramowitz & Stegun 7.1.26); numpy has none and scipy is not a
    dependency. GELU's error from it is below float32 rounding of the activations."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _np_layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def numpy_logits(directory: Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """RobertaForSequenceClassification's logits computed with numpy (float64) from the
    checkpoint, one layer's weights at a time: a reference that shares no code with the graph
    and needs no PyTorch. Slow (a few seconds for a handful of texts); for checks only."""
    cfg = read_config(directory)
    check_buildable(cfg, str(directory))
    h, heads, size = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
    batch, length = input_ids.shape
    with open_checkpoint(directory) as ckpt:

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return ckpt.get(name, shape).astype(np.float64)

        def linear(x: np.ndarray, prefix: str, n_in: int, n_out: int) -> np.ndarray:
            # As a 2-d product (BLAS); numpy's stacked matmul with a transposed operand is not.
            rows = x.reshape(-1, n_in) @ get(f"{prefix}.weight", (n_out, n_in)).T
            return rows.reshape(*x.shape[:-1], n_out) + get(f"{prefix}.bias", (n_out,))

        def norm(x: np.ndarray, prefix: str) -> np.ndarray:
            return _np_layer_norm(
                x, get(f"{prefix}.weight", (h,)), get(f"{prefix}.bias", (h,)), cfg.layer_norm_eps
            )

        e = "roberta.embeddings"
        not_pad = (input_ids != cfg.pad_token_id).astype(np.int64)
        positions = np.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        words = ckpt.get(f"{e}.word_embeddings.weight", (cfg.vocab_size, h))[input_ids]
        places = ckpt.get(f"{e}.position_embeddings.weight", (cfg.max_position_embeddings, h))
        types = ckpt.get(f"{e}.token_type_embeddings.weight", (cfg.type_vocab_size, h))
        x = norm(words.astype(np.float64) + types[0] + places[positions], f"{e}.LayerNorm")
        blocked = attention_mask[:, None, None, :] == 0
        for layer in range(cfg.num_hidden_layers):
            p = f"roberta.encoder.layer.{layer}"

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

            q, k, v = (
                split(linear(x, f"{p}.attention.self.{n}", h, h)) for n in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
            scores = np.where(blocked, np.finfo(np.float32).min, scores)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            context = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, h)
            x = norm(
                linear(context, f"{p}.attention.output.dense", h, h) + x,
                f"{p}.attention.output.LayerNorm",
            )
            up = linear(x, f"{p}.intermediate.dense", h, cfg.intermediate_size)
            gelu = 0.5 * up * (1.0 + _erf(up / math.sqrt(2.0)))
            x = norm(
                linear(gelu, f"{p}.output.dense", cfg.intermediate_size, h) + x,
                f"{p}.output.LayerNorm",
            )
        head = np.tanh(linear(x[:, 0], "classifier.dense", h, h))
        return linear(head, "classifier.out_proj", h, cfg.num_labels)


# Logits of the graph and of the numpy pass differ by float32 rounding (~1e-6 on the test
# models); a wrong graph differs by the size of the logits themselves.
FP32_CHECK_TOLERANCE = 1e-3
FP32_CHECK_TEXTS = 16


def check_fp32_graph(
    directory: Path,
    graph_path: Path,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    tolerance: float = FP32_CHECK_TOLERANCE,
) -> dict[str, Any]:
    """Compare the built graph (onnxruntime) with `numpy_logits` on `texts`; ExportError
    beyond `tolerance`. Returns what the manifest records."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    cfg = read_config(directory)
    encoder = Tokenizer.from_str(tokenizer.to_str())
    encoder.no_padding()
    encoder.enable_truncation(max_length)
    encodings = encoder.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), cfg.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    expected = numpy_logits(directory, ids, mask)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    del session
    diff = np.abs(np.asarray(got, dtype=np.float64) - expected)
    worst = float(diff.max())
    if not worst <= tolerance:  # also catches NaN
        row = int(np.unravel_index(np.nanargmax(diff), diff.shape)[0])
        raise ExportError(
            f"the fp32 graph built from {directory} differs from a numpy forward pass of the "
            f"same weights by {worst:.3g} in the logits (text {texts[row]!r}; tolerance "
            f"{tolerance}): a bug in model_export.graph; export with --via optimum meanwhile"
        )
    return {
        "reference": "numpy forward pass of the checkpoint (float64, model_export.graph)",
        "texts": len(encodings),
        "max_abs_logit_diff": round(worst, 9),
        "tolerance": tolerance,
    }


__all__ = [
    "EncoderConfig",
    "build_fp32_onnx",
    "check_buildable",
    "check_fp32_graph",
    "numpy_logits",
    "open_checkpoint",
    "read_config",
    "weight_bytes",
]
