"""Hugging Face model directories written with numpy and tokenizers alone (no PyTorch).

What `save_pretrained` would write for a `RobertaForSequenceClassification` and its fast
tokenizer: `config.json`, `model.safetensors`, `tokenizer.json`, `vocab.json`, `merges.txt`,
`tokenizer_config.json`, `special_tokens_map.json`. transformers loads such a directory like
a downloaded one (the reference path in the tests does), and `model_export.graph` builds the
ONNX graph from it.

Weights are initialised as transformers initialises RoBERTa (normal(0, initializer_range)
for Linear and Embedding weights with the padding rows zeroed, zero biases, LayerNorm 1/0),
drawn from numpy's seeded generator one tensor at a time and streamed into the safetensors
file, so building roberta-base's shape holds one tensor (150 MB), never the model.
`transform(name, array)` may reshape each tensor as it is written (the trained-like stand-in
does: a spread classifier, outlier LayerNorm features).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ExportError
from agent.vocab import LABELS

# RoBERTa's (fairseq's) special tokens, in id order.
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# RoBERTa numbers positions from padding_idx + 1 = 2, so n tokens need n + 2 positions.
ROBERTA_POSITION_OFFSET = 2

Transform = Callable[[str, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------
# config.json


def roberta_config(
    *,
    vocab_size: int,
    hidden_size: int = 768,
    num_hidden_layers: int = 12,
    num_attention_heads: int = 12,
    intermediate_size: int = 3072,
    max_position_embeddings: int = 514,
    initializer_range: float = 0.02,
    labels: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """RobertaConfig(...).to_dict() for a multi-label classifier, without transformers."""
    return {
        "architectures": ["RobertaForSequenceClassification"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": BOS_ID,
        "classifier_dropout": None,
        "eos_token_id": EOS_ID,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "initializer_range": initializer_range,
        "intermediate_size": intermediate_size,
        "label2id": {label: i for i, label in enumerate(labels)},
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "roberta",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": PAD_ID,
        "position_embedding_type": "absolute",
        "problem_type": "multi_label_classification",
        "torch_dtype": "float32",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def write_config(directory: Path, config: Mapping[str, Any]) -> Path:
    path = Path(directory) / "config.json"
    path.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# model.safetensors


def roberta_tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor RobertaForSequenceClassification saves, in save order."""
    h, i = int(config["hidden_size"]), int(config["intermediate_size"])
    labels = len(config["id2label"])
    e = "roberta.embeddings"
    shapes: dict[str, tuple[int, ...]] = {
        f"{e}.word_embeddings.weight": (int(config["vocab_size"]), h),
        f"{e}.position_embeddings.weight": (int(config["max_position_embeddings"]), h),
        f"{e}.token_type_embeddings.weight": (int(config["type_vocab_size"]), h),
        f"{e}.LayerNorm.weight": (h,),
        f"{e}.LayerNorm.bias": (h,),
    }
    for n in range(int(config["num_hidden_layers"])):
        p = f"roberta.encoder.layer.{n}"
        for kind in ("query", "key", "value"):
            shapes[f"{p}.attention.self.{kind}.weight"] = (h, h)
            shapes[f"{p}.attention.self.{kind}.bias"] = (h,)
        shapes[f"{p}.attention.output.dense.weight"] = (h, h)
        shapes[f"{p}.attention.output.dense.bias"] = (h,)
        shapes[f"{p}.attention.output.LayerNorm.weight"] = (h,)
        shapes[f"{p}.attention.output.LayerNorm.bias"] = (h,)
        shapes[f"{p}.intermediate.dense.weight"] = (i, h)
        shapes[f"{p}.intermediate.dense.bias"] = (i,)
        shapes[f"{p}.output.dense.weight"] = (h, i)
        shapes[f"{p}.output.dense.bias"] = (h,)
        shapes[f"{p}.output.LayerNorm.weight"] = (h,)
        shapes[f"{p}.output.LayerNorm.bias"] = (h,)
    shapes["classifier.dense.weight"] = (h, h)
    shapes["classifier.dense.bias"] = (h,)
    shapes["classifier.out_proj.weight"] = (labels, h)
    shapes["classifier.out_proj.bias"] = (labels,)
    return shapes


def _initial_value(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, std: float, pad: int
) -> np.ndarray:
    """transformers' RobertaPreTrainedModel._init_weights, tensor by tensor."""
    if "LayerNorm.weight" in name:
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, dtype=np.float32)
    array = rng.standard_normal(shape, dtype=np.float32)
    array *= np.float32(std)
    if name.endswith(("word_embeddings.weight", "position_embeddings.weight")):
        array[pad] = 0.0  # nn.Embedding(padding_idx=pad) keeps that row at zero
    return array


def write_safetensors(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    tensor: Callable[[str, tuple[int, ...]], np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write float32 tensors `tensor(name, shape)` one at a time into a safetensors file.

    The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
    length, a JSON header of name -> dtype, shape and [begin, end) byte offsets into the data
    that follows, padded with spaces to 8 bytes, then the tensors back to back.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * ((-len(encoded)) % 8)
    with Path(path).open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, shape in shapes.items():
            array = np.ascontiguousarray(tensor(name, shape), dtype="<f4")
            if array.shape != shape:
                raise ExportError(
                    f"tensor {name!r} came out with shape {array.shape}, not {shape}: "
                    f"a transform must keep shapes"
                )
            handle.write(array.tobytes())
    return Path(path)


def write_random_weights(
    directory: Path, config: Mapping[str, Any], seed: int, transform: Transform | None = None
) -> Path:
    """model.safetensors with transformers-style random weights (seeded, numpy)."""
    rng = np.random.default_rng(seed)
    std = float(config.get("initializer_range", 0.02))
    pad = int(config.get("pad_token_id", PAD_ID))

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = _initial_value(name, shape, rng, std, pad)
        return transform(name, array) if transform is not None else array

    return write_safetensors(
        Path(directory) / "model.safetensors", roberta_tensor_shapes(config), tensor
    )


# ---------------------------------------------------------------------------------------
# The tokenizer: byte-level BPE with RoBERTa's specials, as transformers' RobertaConverter.


def roberta_tokenizer(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> Any:
    """A `tokenizers.Tokenizer` equal to RobertaTokenizerFast(vocab, merges)'s backend."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    for token_id, token in enumerate(SPECIAL_TOKENS[:4]):
        if vocab.get(token) != token_id:
            raise ExportError(
                f"the vocabulary gives {token} id {vocab.get(token)}, not {token_id}: "
                f"RoBERTa's special tokens must come first"
            )
    tokenizer = Tokenizer(
        models.BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # sep and cls positionally: tokenizers 0.23 renamed the keyword `cls` to `cls_token`.
    tokenizer.post_processor = processors.RobertaProcessing(
        (SPECIAL_TOKENS[2], EOS_ID),
        (SPECIAL_TOKENS[0], BOS_ID),
        trim_offsets=True,
        add_prefix_space=False,
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=True, special=True) for token in SPECIAL_TOKENS[:4]]
        + [AddedToken(SPECIAL_TOKENS[4], lstrip=True, normalized=False, special=True)]
    )
    return tokenizer


def _special_token_entry(token: str) -> dict[str, Any]:
    mask = token == SPECIAL_TOKENS[4]
    return {
        "content": token,
        "lstrip": mask,
        "normalized": not mask,
        "rstrip": False,
        "single_word": False,
    }


def write_tokenizer_files(
    directory: Path,
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    max_length: int,
) -> Any:
    """tokenizer.json and the slow-tokenizer files transformers reads; returns the tokenizer."""
    directory = Path(directory)
    tokenizer = roberta_tokenizer(vocab, merges)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    names = {
        "bos_token": SPECIAL_TOKENS[0],
        "cls_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[2],
        "sep_token": SPECIAL_TOKENS[2],
        "pad_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[3],
        "mask_token": SPECIAL_TOKENS[4],
    }
    (directory / "special_tokens_map.json").write_text(
        json.dumps({k: _special_token_entry(v) for k, v in names.items()}, indent=2), "utf-8"
    )
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {**_special_token_entry(t), "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
            if i < 4 or t in vocab
        },
        **names,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": max_length,
        "tokenizer_class": "RobertaTokenizer",
        "trim_offsets": True,
    }
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2), encoding="utf-8"
    )
    return tokenizer


def read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt as (left, right) pairs, skipping the `#version` line."""
    merges = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        left, _, right = line.partition(" ")
        merges.append((left, right))
    return merges


def train_byte_level_bpe(
    texts: Iterable[str], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small byte-level BPE learnt from `texts`, RoBERTa's specials first."""
    import tempfile

    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts),
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    with tempfile.TemporaryDirectory(prefix="captaflow-bpe-") as scratch:
        vocab_file, merges_file = (Path(p) for p in bpe.save_model(scratch))
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        return vocab, read_merges(merges_file)


def load_tokenizer(directory: Path) -> Any:
    """The fast tokenizer of a model directory: tokenizer.json, else vocab.json + merges.txt."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    path = directory / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ExportError(f"cannot read {path} ({exc}): download the model again") from exc
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    if not (vocab_path.is_file() and merges_path.is_file()):
        raise ExportError(
            f"{directory} has no tokenizer.json (nor vocab.json and merges.txt): "
            f"download the model again"
        )
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    return roberta_tokenizer(vocab, read_merges(merges_path))


__all__ = [
    "ROBERTA_POSITION_OFFSET",
    "SPECIAL_TOKENS",
    "load_tokenizer",
    "read_merges",
    "roberta_config",
    "roberta_tensor_shapes",
    "roberta_tokenizer",
    "train_byte_level_bpe",
    "write_config",
    "write_random_weights",
    "write_safetensors",
    "write_tokenizer_files",
]
