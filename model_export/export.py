"""The one-time export: Hugging Face model -> ONNX -> fused -> int8, parity check, bundle.

Every source (the CardiffNLP model from the Hub, or a local directory such as the --tiny
and --random-base stand-ins) goes through `export_bundle`, so the tests exercise the path a
user runs. The bundle is built in a staging directory next to the output and published with
`agent.bundle.publish_bundle`, which writes the manifest last and renames the directory into
place, so an interrupted export never leaves a bundle that looks complete.

Heavy libraries (torch, transformers, optimum) are imported inside the functions that need
them: the agent imports this module only when the user asks for an export.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Manifest,
    ModelBundle,
    QuantizationSettings,
    file_entry,
    load_bundle,
    publish_bundle,
)
from agent.errors import CaptaFlowError, ExportError
from agent.vocab import DEFAULT_DISPLAYED, LABELS, MODEL_ID
from model_export.parity import (
    REAL_MODEL_TOLERANCE,
    ParityTolerance,
    check_parity,
    compare_probabilities,
    parity_problem,
)
from model_export.parity_texts import CALIBRATION_TEXTS, PARITY_TEXTS

# Chat messages are short: in real captures the median is about 7 tokens and almost none
# pass 80. 128 keeps every ordinary message whole while capping what a 50,000-character
# copypasta costs (attention is quadratic in length); the scorer truncates at this length.
DEFAULT_MAX_LENGTH = 128
ROBERTA_POSITION_OFFSET = 2

# Signed int8 weights: on AVX2 CPUs without VNNI they ran about 1.5x faster than the
# unsigned preset. Per-tensor scales: there, u8 x s8 products are summed in pairs into int16
# (vpmaddubsw) and saturate when weights use the full -127..127 range; per-channel scales push
# every column to that range, and on the tiny model raised the worst probability error from
# 0.037 (per-tensor) to 0.17. Per-channel is only safe with reduce_range (7-bit weights),
# which measured no better than per-tensor (0.057).
DEFAULT_PER_CHANNEL = False
DEFAULT_REDUCE_RANGE = False

# What the export needs on disk besides the download, as a multiple of the fp32 weights:
# the exported, fused and pre-processed fp32 graphs plus the int8 model.
_DISK_FACTOR = 3.5

Progress = Callable[[str], None]


def no_progress(message: str) -> None:
    """The default progress sink: export quietly."""


class StageClock:
    """Prints stage lines with the seconds elapsed since the export started."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._start = time.monotonic()

    def __call__(self, message: str) -> None:
        stream = self._stream or sys.stderr
        print(f"[{time.monotonic() - self._start:7.1f}s] {message}", file=stream, flush=True)


def default_model_dir() -> Path:
    """Where the agent looks for its bundle when no --model is given (honours
    CAPTAFLOW_DATA_DIR; otherwise platformdirs' user data dir of CaptaFlow, plus `model`)."""
    from agent.paths import resolve_locations

    return resolve_locations().model_dir


def intermediate_dir_for(out: Path) -> Path:
    """Where --keep-intermediate keeps the ONNX graphs (and a built source) of `out`."""
    return out.parent / f"{out.name}-intermediate"


def stand_in_source_dir(work_dir: Path) -> Path:
    """Where --tiny / --random-base build their Hugging Face model inside `work_dir`."""
    return work_dir / "source"


def package_versions() -> dict[str, str]:
    import agent

    versions = {"python": sys.version.split()[0], "captaflow": agent.__version__}
    for dist in (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnxruntime",
        "onnx",
        "tokenizers",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def count_ops(model_path: Path) -> dict[str, int]:
    """How many nodes of each op type the ONNX graph at `model_path` holds."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


INT8_OPS = (
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QAttention",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QLinearMatMul",
    "DynamicQuantizeLSTM",
    "QEmbedLayerNormalization",
)


# ---------------------------------------------------------------------------------------
# Errors: translate what the Hub, the OS and the converters raise into one line each.


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_disk_full(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _cause_chain(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def translate_load_error(exc: BaseException, model_id: str, revision: str | None) -> ExportError:
    """One line for a failure to find or download the source model on the Hub."""
    from huggingface_hub import errors as hub_errors

    chain = list(_cause_chain(exc))

    def raised(kind: type[BaseException]) -> bool:
        return any(isinstance(e, kind) for e in chain)

    if raised(hub_errors.RevisionNotFoundError):
        return ExportError(
            f"revision {revision!r} of model {model_id!r} does not exist on the "
            f"Hugging Face Hub: check --revision (a branch, tag or commit)"
        )
    if raised(hub_errors.GatedRepoError):  # before its base class RepositoryNotFoundError
        return ExportError(
            f"model {model_id!r} is gated on the Hugging Face Hub: accept its "
            f"terms on huggingface.co and log in with `hf auth login`"
        )
    if raised(hub_errors.RepositoryNotFoundError):
        return ExportError(
            f"model {model_id!r} was not found on the Hugging Face Hub (or is "
            f"private): check --model-id (the default is {MODEL_ID})"
        )
    if _is_disk_full(exc):
        return ExportError(
            f"no space left on the disk while downloading {model_id!r}: free "
            f"about 2 GB (Hugging Face cache and --out) and run again"
        )
    if (
        raised(hub_errors.OfflineModeIsEnabled)
        or raised(ConnectionError)
        or raised(OSError)
        or (raised(TimeoutError))
    ):
        return ExportError(
            f"could not download {model_id!r} from the Hugging Face Hub (offline, or the Hub "
            f"is unreachable): connect to the internet and run again; it downloads about "
            f"500 MB once"
        )
    return ExportError(
        f"could not fetch model {model_id!r} ({_first_line(exc)}): check --model-id and "
        f"--revision, or run with --debug for details"
    )


class _Stages:
    """Reports each stage and turns an unexpected failure inside it into one ExportError."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._progress(name)
        try:
            # torch's tracer, optimum and onnxruntime warn about their own internals
            # (legacy exporter, tracer booleans); nothing a user can act on, and under
            # warnings-as-errors they would abort the export from inside C code.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except CaptaFlowError:
            raise
        except Exception as exc:
            if _is_disk_full(exc):
                raise ExportError(
                    f"no space left on the disk while {name}: free some space and run again"
                ) from exc
            raise ExportError(
                f"{name} failed ({type(exc).__name__}: {_first_line(exc)}): "
                f"run again with --debug for details"
            ) from exc


# ---------------------------------------------------------------------------------------
# The steps.


# What the export needs from a model repository: config, tokenizer files, one set of weights.
_CONFIG_AND_TOKENIZER = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "sentencepiece.bpe.model",
)


def fetch_source(model_id: str, revision: str | None) -> tuple[Path, str]:
    """Download (or find in the Hugging Face cache) what the export needs of `model_id`.

    Returns the local snapshot directory and the commit it holds. Talking to the Hub
    before importing torch makes a wrong id or no network fail in seconds, with a clear line.
    """
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
    except Exception as exc:
        try:
            # Offline, but exported before: the cache may hold everything already.
            cached = snapshot_download(
                model_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=[*_CONFIG_AND_TOKENIZER, "*.safetensors", "pytorch_model.bin"],
            )
        except Exception:
            raise translate_load_error(exc, model_id, revision) from exc
        return Path(cached), Path(cached).name
    siblings = {s.rfilename: s.size or 0 for s in info.siblings or []}
    safetensors = [name for name in siblings if name.endswith(".safetensors")]
    weights = safetensors or [name for name in siblings if name == "pytorch_model.bin"]
    if not weights or "config.json" not in siblings:
        raise ExportError(
            f"model {model_id!r} has no PyTorch weights or config.json on the "
            f"Hub: use --model-id {MODEL_ID}"
        )
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(HF_HUB_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    needed = sum(siblings[name] for name in weights)
    free = shutil.disk_usage(cache).free
    if free < needed:
        raise ExportError(
            f"{cache} has {free / 1e6:.0f} MB free but {model_id!r} needs "
            f"{needed / 1e6:.0f} MB: free some space (or set HF_HOME elsewhere)"
        )
    try:
        path = snapshot_download(
            model_id, revision=info.sha, allow_patterns=[*_CONFIG_AND_TOKENIZER, *weights]
        )
    except Exception as exc:
        raise translate_load_error(exc, model_id, revision) from exc
    return Path(path), str(info.sha)


def _load_source(directory: str, threads: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(max(1, threads))
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True)
        # Eager attention exports as plain MatMul/Softmax, the pattern onnxruntime's fusion
        # recognises; SDPA exports differently and would stay unfused (slower).
        model = AutoModelForSequenceClassification.from_pretrained(
            directory, attn_implementation="eager"
        )
    except Exception as exc:
        raise ExportError(
            f"could not load the model in {directory} ({_first_line(exc)}): delete it and "
            f"run again, or pass --model-id {MODEL_ID}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            f"the model in {directory} has no fast tokenizer, so no tokenizer.json can "
            f"be written: CaptaFlow needs a RoBERTa/BERT-style model"
        )
    return tokenizer, model.eval()


def check_source_config(config: Any, source: str, max_length: int) -> None:
    """Refuse a model the agent could not use, before spending minutes on it."""
    labels = tuple(config.id2label[i] for i in range(len(config.id2label)))
    if labels != LABELS:
        raise ExportError(
            f"model {source!r} has labels {list(labels)}, but CaptaFlow needs the 11 "
            f"CardiffNLP emotion labels in order {list(LABELS)}: use --model-id {MODEL_ID}"
        )
    if config.model_type not in ("roberta", "bert", "xlm-roberta", "camembert"):
        raise ExportError(
            f"model {source!r} is a {config.model_type!r} model; the export "
            f"fuses BERT-style encoders only: use --model-id {MODEL_ID}"
        )
    offset = ROBERTA_POSITION_OFFSET if config.model_type != "bert" else 0
    limit = int(config.max_position_embeddings) - offset
    if not 8 <= max_length <= limit:
        raise ExportError(
            f"--max-length {max_length} is outside 8..{limit}, what model "
            f"{source!r} supports: pick a value in that range (default "
            f"{DEFAULT_MAX_LENGTH})"
        )


def _check_disk(directory: Path, model: Any) -> None:
    weights = (
        model
        if isinstance(model, int)
        else sum(p.numel() * p.element_size() for p in model.parameters())
    )
    needed = int(weights * _DISK_FACTOR)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise ExportError(
            f"{directory} has {free / 1e6:.0f} MB free but the export needs about "
            f"{needed / 1e6:.0f} MB: free some space or pass another --out"
        )


def _export_onnx(model: Any, tokenizer: Any, directory: Path) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    # Our own parity check (against the int8 model the user actually gets) replaces
    # optimum's fp32 validation.
    # optimum logs at WARNING that it cannot check for tied weights without `accelerate`;
    # a classifier has none, so the line would only worry the user.
    optimum_logger = logging.getLogger("optimum")
    level = optimum_logger.level
    optimum_logger.setLevel(logging.ERROR)
    try:
        onnx_export_from_model(
            model,
            directory,
            task="text-classification",
            do_validation=False,
            preprocessors=[tokenizer],
        )
    finally:
        optimum_logger.setLevel(level)
    path = directory / "model.onnx"
    if not path.is_file():
        raise ExportError(f"optimum wrote no model.onnx into {directory}: run with --debug")
    return path


# The fusions the bundle's graph gets. Left out: SkipLayerNormalization (Add +
# LayerNormalization in one op) and BiasGelu (Add + Gelu): in onnxruntime's profile of the
# int8 roberta-base they ran slower than the ops they replace (6.4-6.9 ns per element for
# SkipLayerNormalization against 0.9 for Add + LayerNormalization). Attention becomes
# MultiHeadAttention with the Q/K/V projections left as three MatMuls: they quantise as
# plain MatMulInteger, and SmoothQuant can rescale their shared input. The scorer opens the
# session with agent.scorer.DISABLED_OPTIMIZERS so onnxruntime does not fuse them back.
FUSION_CHOICES = {
    "enable_skip_layer_norm": False,
    "enable_bias_skip_layer_norm": False,
    "enable_bias_gelu": False,
    "use_multi_head_attention": True,
}


def _fuse(
    fp32_path: Path,
    out_path: Path,
    config: Any,
    opt_level: int | None = None,
    fusions: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """`fusions`: FusionOptions attributes to set (None: FUSION_CHOICES; {}: onnxruntime's
    defaults, the earlier export's graph, kept for the benchmark's comparison)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    from agent.scorer import DISABLED_OPTIMIZERS
    from model_export.lean import fuse_bert

    chosen = dict(FUSION_CHOICES if fusions is None else fusions)
    options = FusionOptions("bert")
    for name, value in chosen.items():
        setattr(options, name, value)
    # opt_level None is the optimizer's default for "bert" (1: an onnxruntime pass first,
    # which imports torch and holds another copy of the model); the light path's graph needs
    # no such pass (0 fuses it the same, tested) and must run without torch. fuse_bert is
    # optimize_model + save, leaving the weights on disk when they are external (light path).
    optimized = fuse_bert(
        fp32_path,
        out_path,
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=opt_level,
        optimization_options=options,
    )
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(out_path))

    return {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": "bert",
        "num_heads": int(config.num_attention_heads),
        "hidden_size": int(config.hidden_size),
        "fusion_options": chosen,
        "session_disabled_optimizers": list(DISABLED_OPTIMIZERS),
        "fused_operators": fused,
    }


def head_nodes(model_path: Path) -> list[str]:
    """Nodes between the last LayerNormalization and the graph's outputs: the head.

    The classification head reads one token (<s>) per text, so keeping it fp32 costs
    nothing measurable, while its int8 activations would carry the outlier features of the
    last LayerNorm straight into the logits.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    todo = [o.name for o in graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "LayerNormalization":
            continue
        seen.add(node.name)
        names.append(node.name)
        todo.extend(node.input)
    return names


def _quantize(
    fused_path: Path,
    work: Path,
    out_path: Path,
    settings: QuantizationSettings,
    exclude: Sequence[str],
) -> None:
    from onnxruntime.quantization import QuantType

    # onnxruntime's pre-processing and quantize_dynamic, copying the model less (lean.py).
    from model_export.lean import pre_process, quantize_dynamic

    prepared = fused_path.parent / "model.prepared.onnx"
    # Shape inference over the fused contrib ops; without it quantize_dynamic misses
    # MatMuls whose input shapes it cannot see. (quant_pre_process, weights left on disk
    # when they are external.)
    pre_process(fused_path, prepared, skip_optimization=True, auto_merge=True)
    quantize_dynamic(
        prepared,
        out_path,
        weight_type=getattr(QuantType, settings.weight_type),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        op_types_to_quantize=list(settings.op_types),
        # quantize_dynamic rewrites a Gemm as MatMul + Add named "<gemm>_MatMul" first.
        nodes_to_exclude=[n for name in exclude for n in (name, f"{name}_MatMul")],
    )


def half_embeddings(model_path: Path, min_elements: int = 1 << 19) -> list[str]:
    """Store the large float32 tables that Gather nodes read as float16, with a Cast back to
    float32 after each look-up. Returns the tables converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    inits = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    converted: list[str] = []
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if (
            table is None
            or table.data_type != TensorProto.FLOAT
            or int(np.prod(table.dims)) < min_elements
            or readers[table.name] != 1
        ):
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), table.name)
        table.CopyFrom(half)
        wide = node.output[0]
        node.output[0] = f"{wide}_float16"
        nodes.append(
            helper.make_node(
                "Cast",
                [node.output[0]],
                [wide],
                name=f"{node.name}_to_float32",
                to=TensorProto.FLOAT,
            )
        )
        converted.append(table.name)
    if converted:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(model_path))
    return converted


def write_tokenizer_json(tokenizer: Any, path: Path, max_length: int) -> None:
    """Save the fast tokenizer as the scorer reads it: truncating at max_length, no padding."""
    from tokenizers import Tokenizer

    # A transformers fast tokenizer, or (the light path) a tokenizers.Tokenizer itself.
    backend = Tokenizer.from_str(getattr(tokenizer, "backend_tokenizer", tokenizer).to_str())
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(path))


def prepared_texts(texts: Sequence[str]) -> list[str]:
    """The texts as the scorer's model reads them (textprep with the default emote table)."""
    from agent.textprep import load_emote_table, prepare

    emotes = load_emote_table(None)
    return [prepare(t, emotes) for t in texts]


def torch_probabilities(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """The original: sigmoid of the PyTorch model's logits."""
    import torch

    encoded = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        logits = model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).logits
    return torch.sigmoid(logits).double().numpy()


def onnx_probabilities(
    model_path: Path,
    tokenizer_path: Path,
    texts: Sequence[str],
    pad_token_id: int,
    threads: int = 1,
) -> np.ndarray:
    """Sigmoid of an ONNX model's logits, tokenised with the bundle's tokenizer.json."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    input_ids = np.full((len(encodings), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        input_ids[row, : len(encoding.ids)] = encoding.ids
        attention_mask[row, : len(encoding.ids)] = 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    declared = {i.name for i in session.get_inputs()}
    if not declared <= feeds.keys():
        raise ExportError(
            f"{model_path} expects inputs {sorted(declared)}, but CaptaFlow feeds "
            f"only input_ids and attention_mask: use --model-id {MODEL_ID}"
        )
    (logits,) = session.run(None, {k: v for k, v in feeds.items() if k in declared})
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


# The fp32 exporters `export_bundle(via=...)` chooses from, and what parity compares with.
EXPORTERS = {
    "light": "model_export.graph (onnx + numpy, weights streamed from the checkpoint)",
    "optimum": "optimum (PyTorch, transformers eager attention)",
}


def _light_fp32(
    local_dir: Path, work: Path, source: str, max_length: int, disk: Path
) -> tuple[Any, Any, Path, dict[str, Any]]:
    """The light path's first stage: config, tokenizer and fp32 graph, without PyTorch.

    The graph goes to `work` (model.fp32.onnx + its .data), beside the fused and prepared
    graphs, so those keep pointing into its data file instead of copying the weights. The
    graph is checked against a numpy forward pass of the same weights (what the manifest's
    optimization.fp32_check records), so the light path needs no PyTorch to be trusted."""
    from model_export.graph import (
        FP32_CHECK_TEXTS,
        build_fp32_onnx,
        check_buildable,
        check_fp32_graph,
        read_config,
        weight_bytes,
    )
    from model_export.hfdir import load_tokenizer

    config = read_config(local_dir)
    check_source_config(config, source, max_length)
    check_buildable(config, source)
    _check_disk(disk, weight_bytes(local_dir))
    tokenizer = load_tokenizer(local_dir)
    fp32_path = build_fp32_onnx(local_dir, work / "model.fp32.onnx", config=config)
    texts = PARITY_TEXTS[:FP32_CHECK_TEXTS]
    check = check_fp32_graph(local_dir, fp32_path, tokenizer, texts, max_length)
    return tokenizer, config, fp32_path, check


def _torch_fp32(
    stage: _Stages,
    local_dir: str,
    work: Path,
    source: str,
    max_length: int,
    disk: Path,
    threads: int,
    parity_texts: Sequence[str] | None,
) -> tuple[Any, Any, np.ndarray | None, Path]:
    """The optimum path's first stages: PyTorch model, reference probabilities, fp32 graph."""
    with stage(f"loading {source} into PyTorch"):
        tokenizer, model = _load_source(local_dir, threads)
        check_source_config(model.config, source, max_length)
        _check_disk(disk, model)
        config = model.config
        # The reference is computed now so the PyTorch model can be freed before the
        # graph tools load their own copies (roberta-base peaks several GB otherwise).
        reference = (
            None
            if parity_texts is None
            else torch_probabilities(model, tokenizer, prepared_texts(parity_texts), max_length)
        )
    with stage("exporting to ONNX (fp32) with optimum"):
        fp32_path = _export_onnx(model, tokenizer, work / "onnx")
        del model
        gc.collect()
    return tokenizer, config, reference, fp32_path


def _clean_stale_staging(out: Path) -> None:
    """Remove staging directories that a killed export left next to `out`."""
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------


def export_bundle(
    source: str | Path,
    out: Path,
    *,
    revision: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    threads: int = 1,
    source_model_id: str | None = None,
    source_revision: str | None = None,
    quantization: QuantizationSettings | None = None,
    tolerance: ParityTolerance = REAL_MODEL_TOLERANCE,
    parity_texts: Sequence[str] = PARITY_TEXTS,
    calibration_texts: Sequence[str] = CALIBRATION_TEXTS,
    skip_parity: bool = False,
    work_dir: Path | None = None,
    progress: Progress = no_progress,
    via: str = "light",
    test_model: str | None = None,
    fusions: Mapping[str, bool] | None = None,
) -> ModelBundle:
    """Export `source` (a Hub model id or a local model directory) into a bundle at `out`.

    `source_model_id`/`source_revision` are what the manifest records (default: `source`
    and the commit transformers resolved).
    Intermediate graphs go to `work_dir` and are kept there when it is given; otherwise
    they go to a temporary directory beside `out` and are removed. Raises ExportError.
    `via` picks the fp32 exporter: "light" (model_export.graph: the graph built from the
    safetensors with onnx and numpy, no PyTorch; the parity reference is that fp32 graph) or
    "optimum" (PyTorch + optimum; the reference is PyTorch). `test_model` labels a stand-in.
    """
    if via not in EXPORTERS:
        raise ExportError(f"--via {via!r} is not one of {', '.join(EXPORTERS)}")
    if via == "optimum":
        import importlib.util

        missing = [
            m for m in ("torch", "transformers", "optimum") if not importlib.util.find_spec(m)
        ]
        if missing:
            raise ExportError(
                f"--via optimum needs {', '.join(missing)}: run `pip install "
                f"'captaflow[export-torch]'`, or drop --via optimum (the light export needs "
                f"no PyTorch)"
            )
    source = str(source)
    out = Path(out).expanduser().resolve()
    settings = quantization or QuantizationSettings()
    stage = _Stages(progress)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create {out.parent} ({exc.strerror}): pass another --out"
        ) from exc
    _clean_stale_staging(out)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    keep_work = work_dir is not None
    work = (
        Path(work_dir)
        if work_dir is not None
        else Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    )
    try:
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        local_dir = source
        if not Path(source).is_dir():
            with stage(
                f"downloading {source}"
                + (f" at revision {revision}" if revision else "")
                + " from the Hugging Face Hub"
            ):
                snapshot, commit = fetch_source(source, revision)
                local_dir, source_revision = str(snapshot), source_revision or commit
        if via == "light":
            with stage(f"loading {source} into an fp32 ONNX graph (onnx + numpy, no PyTorch)"):
                tokenizer, config, fp32_path, fp32_check = _light_fp32(
                    Path(local_dir), work, source, max_length, out.parent
                )
                reference = None  # computed on this fp32 graph once tokenizer.json exists
        else:
            fp32_check = None
            tokenizer, config, reference, fp32_path = _torch_fp32(
                stage,
                local_dir,
                work,
                source,
                max_length,
                out.parent,
                threads,
                None if skip_parity else parity_texts,
            )
        pad_token_id = int(config.pad_token_id if via == "light" else tokenizer.pad_token_id)
        with stage("writing tokenizer.json"):
            tokenizer_path = staging / TOKENIZER_FILE
            write_tokenizer_json(tokenizer, tokenizer_path, max_length)
        # The stage boundary: an fp32 ONNX graph (either exporter) and tokenizer.json in;
        # everything after is the same for both.
        parts = int8_from_fp32(
            fp32_path,
            tokenizer_path,
            staging / MODEL_FILE,
            work,
            shape=GraphShape(
                num_attention_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                pad_token_id=pad_token_id,
                max_length=max_length,
            ),
            settings=settings,
            tolerance=tolerance,
            parity_texts=None if skip_parity else parity_texts,
            calibration_texts=calibration_texts,
            threads=threads,
            opt_level=0 if via == "light" else None,
            torch_reference=reference,
            progress=progress,
            fusions=fusions,
        )
        parts.optimization["fp32_exporter"] = EXPORTERS[via]
        if fp32_check is not None:
            parts.optimization["fp32_check"] = fp32_check
        with stage("publishing the bundle"):
            manifest = Manifest(
                source_model_id=source_model_id or source,
                source_revision=source_revision or revision or "local",
                labels=LABELS,
                max_length=max_length,
                pad_token_id=pad_token_id,
                files={
                    MODEL_FILE: file_entry(staging / MODEL_FILE),
                    TOKENIZER_FILE: file_entry(tokenizer_path),
                },
                quantization=parts.quantization,
                optimization=parts.optimization,
                parity=parts.parity,
                versions=package_versions(),
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                test_model=test_model,
                outputs="logits",
            )
            progress(f"moving it into place: {out}")
            publish_bundle(staging, out, manifest)
            bundle = load_bundle(out)
        size = bundle.model_path.stat().st_size
        progress(f"done: {out} ({size / 1e6:.1f} MB model)")
        return bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def fp32_head_inputs(
    source_dir: Path, texts: Sequence[str], work: Path, via: str = "light", max_length: int = 128
) -> np.ndarray:
    """What the classifier head reads (texts x hidden) in the fp32 graph of `source_dir`.

    Runs the export's own first stage (the `via` exporter) into `work`, so a stand-in's head
    is calibrated on the graph the export quantises.
    """
    import onnx
    import onnxruntime as ort

    from model_export.standin import head_input_name

    work.mkdir(parents=True, exist_ok=True)
    if via == "light":
        from model_export.graph import build_fp32_onnx

        fp32_path = build_fp32_onnx(source_dir, work / MODEL_FILE)
    else:
        tokenizer, model = _load_source(str(source_dir), 1)
        fp32_path = _export_onnx(model, tokenizer, work)
        del model
    name = head_input_name(fp32_path, source_dir)
    model_proto = onnx.load(str(fp32_path))
    model_proto.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
    from tokenizers import Tokenizer

    from agent.scorer import feeds_for

    tokenizer_json = Tokenizer.from_file(str(source_dir / TOKENIZER_FILE))
    tokenizer_json.no_padding()
    tokenizer_json.enable_truncation(max_length)
    prepared = prepared_texts(texts)
    sequences = [tokenizer_json.encode(t).ids for t in prepared]
    rows: list[np.ndarray] = [np.empty(0)] * len(texts)
    for batch, feed in feeds_for(sequences, int(config.get("pad_token_id", 1)), prepared):
        (values,) = session.run([name], feed)
        for row, index in zip(values, batch, strict=True):
            rows[index] = np.asarray(row, dtype=np.float64)
    return np.stack(rows)


# ---------------------------------------------------------------------------------------
# Stage two: fp32 ONNX + tokenizer.json -> int8 model.onnx, whichever exporter made the graph.


@dataclass(frozen=True, slots=True)
class GraphShape:
    """What stage two needs to know of the model besides its graph."""

    num_attention_heads: int
    hidden_size: int
    pad_token_id: int
    max_length: int


@dataclass(slots=True)
class Int8Parts:
    """What stage two produced for the manifest (the model itself is at `model_path`)."""

    quantization: dict[str, Any]
    optimization: dict[str, Any]
    parity: dict[str, Any]


def _provisional_bundle(model_path: Path, tokenizer_path: Path, shape: GraphShape) -> ModelBundle:
    """A bundle over a work graph and the bundle's tokenizer.json, so the parity check runs
    each graph through `agent.scorer.Scorer` exactly as the agent will."""
    unverified = {"sha256": "unverified (export work file)"}
    manifest = Manifest(
        source_model_id="export-work",
        source_revision="",
        labels=LABELS,
        max_length=shape.max_length,
        pad_token_id=shape.pad_token_id,
        files={MODEL_FILE: unverified, TOKENIZER_FILE: unverified},
        outputs="logits",
    )
    return ModelBundle(
        path=model_path.parent,
        manifest=manifest,
        model_file=model_path.name,
        tokenizer_file=str(tokenizer_path.resolve()),
    )


def scorer_probabilities(
    model_path: Path,
    tokenizer_path: Path,
    shape: GraphShape,
    texts: Sequence[str],
    threads: int,
) -> np.ndarray:
    """Probabilities of the graph at `model_path` through agent.scorer (cache off): the
    scorer's session options, textprep, tokeniser and batch plan."""
    from agent.scorer import Scorer

    bundle = _provisional_bundle(model_path, tokenizer_path, shape)
    scorer = Scorer(bundle, threads=threads, cache_size=0)
    return scorer.score(list(texts)).astype(np.float64)


def calibration_feeds(
    tokenizer_path: Path, pad_token_id: int, texts: Sequence[str], max_length: int
) -> list[dict[str, np.ndarray]]:
    """The scorer's batches (textprep, truncation, batch plan, padding) of `texts`."""
    from tokenizers import Tokenizer

    from agent.scorer import feeds_for

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    prepared = prepared_texts(texts)
    sequences = [tokenizer.encode(t).ids for t in prepared]
    return [feed for _, feed in feeds_for(sequences, pad_token_id, prepared)]


def int8_from_fp32(
    fp32_path: Path,
    tokenizer_path: Path,
    model_path: Path,
    work: Path,
    *,
    shape: GraphShape,
    settings: QuantizationSettings,
    tolerance: ParityTolerance,
    parity_texts: Sequence[str] | None,
    calibration_texts: Sequence[str] = CALIBRATION_TEXTS,
    threads: int = 1,
    opt_level: int | None = 0,
    torch_reference: np.ndarray | None = None,
    progress: Progress = no_progress,
    fusions: Mapping[str, bool] | None = None,
) -> Int8Parts:
    """Fuse, migrate outliers, quantise and check `fp32_path`; writes `model_path`.

    `fp32_path` must be named model.onnx (its external data beside it); `tokenizer_path` is
    the bundle's tokenizer.json. `parity_texts` None skips the parity check. Raises
    ExportError when the int8 model is out of `tolerance` against the fp32 graph.
    """
    from model_export.smooth import smooth_graph

    stage = _Stages(progress)
    with stage("fusing the transformer graph (onnxruntime optimizer)"):
        # Beside the fp32 graph: with external weights (light path) the fused graph keeps
        # pointing into the fp32 graph's data file instead of copying it.
        fused_path = fp32_path.parent / "model.fused.onnx"
        optimization = _fuse(fp32_path, fused_path, shape, opt_level, fusions)
        progress(f"fused: {optimization['fused_operators']}")
    to_quantize = fused_path
    outliers: dict[str, Any] = {}
    if settings.smooth_alpha is not None:
        with stage(
            f"migrating activation outliers into the weights (SmoothQuant, alpha "
            f"{settings.smooth_alpha}, calibrated on {len(calibration_texts)} chat texts)"
        ):
            smoothed_path = fp32_path.parent / "model.smoothed.onnx"
            sites = smooth_graph(
                fused_path,
                smoothed_path,
                lambda: calibration_feeds(
                    tokenizer_path, shape.pad_token_id, calibration_texts, shape.max_length
                ),
                settings.smooth_alpha,
            )
            to_quantize = smoothed_path
            outliers["smoothquant"] = {
                "alpha": settings.smooth_alpha,
                "calibration_texts": len(calibration_texts),
                "sites": [
                    {
                        "activation": site.activation,
                        "matmuls": list(site.matmuls),
                        "outlier_ratio_before": site.max_activation_ratio,
                        "outlier_ratio_after": site.after_ratio,
                    }
                    for site in sites
                ],
            }
            progress(
                f"migrated {len(sites)} activations (largest channel / median channel: "
                f"{max((x.max_activation_ratio for x in sites), default=0):.0f} before, "
                f"{max((x.after_ratio for x in sites), default=0):.1f} after)"
            )
    head = head_nodes(to_quantize) if settings.fp32_head else []
    outliers["fp32_nodes"] = head
    # Embedding look-ups are not quantised when Gather is not in op_types (their tables are
    # float16 or float32, see QuantizationSettings.embeddings).
    outliers["not_int8_ops"] = sorted({"Gather"} - set(settings.op_types))
    with stage(
        f"quantising to int8 ({settings.weight_type}, per_channel={settings.per_channel}, "
        f"{len(head)} head nodes kept fp32)"
    ):
        _quantize(to_quantize, work, model_path, settings, head)
        if settings.embeddings == "float16" and "Gather" not in settings.op_types:
            outliers["float16_tables"] = half_embeddings(model_path)
        ops = count_ops(model_path)
        int8_ops = {op: n for op, n in ops.items() if op in INT8_OPS}
        if not int8_ops:
            raise ExportError(
                f"quantisation left {model_path} without any int8 operator "
                f"({ops}): report this with --debug output"
            )
        progress(f"int8 operators: {int8_ops}")
    quantization = {
        **settings.to_json(),
        "tool": "onnxruntime.quantization",
        "int8_operators": int8_ops,
        "operators": ops,
        "outliers": outliers,
    }
    parity: dict[str, Any] = {"skipped": True}
    if parity_texts is not None:
        with stage(
            f"checking parity of int8 against the fp32 graph on {len(parity_texts)} texts "
            f"(through agent.scorer)"
        ):
            parity = _parity(
                fp32_path,
                to_quantize,
                model_path,
                tokenizer_path,
                work,
                shape,
                parity_texts,
                threads,
                tolerance,
                torch_reference,
            )
        progress(
            f"parity: mean |dp| {parity['mean_abs_diff']:.5f}, max {parity['max_abs_diff']:.4f}, "
            f"same top emotion {parity['top_label_agreement']:.1%} "
            f"(tolerance: mean {tolerance.max_mean_abs_diff}, max {tolerance.max_abs_diff}, "
            f"agreement {tolerance.min_top_label_agreement})"
        )
    return Int8Parts(quantization=quantization, optimization=optimization, parity=parity)


def _parity(
    fp32_path: Path,
    prequant_path: Path,
    int8_path: Path,
    tokenizer_path: Path,
    work: Path,
    shape: GraphShape,
    texts: Sequence[str],
    threads: int,
    tolerance: ParityTolerance,
    torch_reference: np.ndarray | None,
) -> dict[str, Any]:
    """int8 against the fp32 graph, both through agent.scorer (same options, batching).

    Also checked, to tell an export bug from a quantisation loss: the fused (and smoothed)
    fp32 graph that was quantised against the fp32 graph, and with the optimum exporter the
    fp32 graph against PyTorch.
    """
    reference = scorer_probabilities(fp32_path, tokenizer_path, shape, texts, threads)
    prequant = scorer_probabilities(prequant_path, tokenizer_path, shape, texts, threads)
    candidate = scorer_probabilities(int8_path, tokenizer_path, shape, texts, threads)
    exact = ParityTolerance(max_abs_diff=1e-3)
    extra: dict[str, Any] = {}
    if torch_reference is not None:
        vs_torch = compare_probabilities(torch_reference, reference, texts, LABELS)
        check_parity(vs_torch, exact, "the fp32 ONNX graph (against PyTorch)")
        extra["fp32_onnx_vs_pytorch_max_abs_diff"] = round(vs_torch.max_abs_diff, 8)
    pre = compare_probabilities(reference, prequant, texts, LABELS)
    check_parity(pre, exact, "the fused fp32 graph before quantisation")
    int8 = compare_probabilities(reference, candidate, texts, LABELS)
    problem = parity_problem(int8, tolerance, "the int8 model")
    if problem is not None:
        raise ExportError(
            f"{problem} (mean |dp| {int8.mean_abs_diff:.5f}, max {int8.max_abs_diff:.4f}, "
            f"top emotion {int8.top_label_agreement:.1%}): the bundle is not published; "
            f"report this with --debug output"
        )
    # How often each displayed emotion is on top in the reference: agreement means little
    # when one label is on top of nearly every text.
    shown = [LABELS.index(label) for label in DEFAULT_DISPLAYED]
    tops = Counter(DEFAULT_DISPLAYED[i] for i in np.argmax(reference[:, shown], axis=1))
    return {
        **int8.to_json(),
        "reference_top_emotions": dict(tops.most_common()),
        "fp32_onnx_max_abs_diff": round(pre.max_abs_diff, 8),
        **extra,
        "tolerance": tolerance.to_json(),
        "passed": True,
        "reference": "the fp32 ONNX graph",
        "measured_with": "agent.scorer (its session options, textprep and batch plan)",
    }


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "MANIFEST_FILE",
    "GraphShape",
    "QuantizationSettings",
    "StageClock",
    "count_ops",
    "default_model_dir",
    "export_bundle",
    "int8_from_fp32",
]
