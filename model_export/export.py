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
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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
    file_entry,
    load_bundle,
    publish_bundle,
)
from agent.errors import CaptaFlowError, ExportError
from agent.vocab import LABELS, MODEL_ID
from model_export.parity import (
    REAL_MODEL_TOLERANCE,
    ParityTolerance,
    check_parity,
    compare_probabilities,
)
from model_export.parity_texts import PARITY_TEXTS

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


@dataclass(frozen=True, slots=True)
class QuantizationSettings:
    weight_type: str = "QInt8"
    per_channel: bool = DEFAULT_PER_CHANNEL
    reduce_range: bool = DEFAULT_REDUCE_RANGE

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "dynamic",
            "weight_type": self.weight_type,
            "activation_type": "QUInt8",
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
        }


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


def _fuse(
    fp32_path: Path, out_path: Path, config: Any, opt_level: int | None = None
) -> dict[str, Any]:
    from model_export.lean import fuse_bert

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
    )
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": "bert",
        "num_heads": int(config.num_attention_heads),
        "hidden_size": int(config.hidden_size),
        "fused_operators": fused,
    }


def _quantize(fused_path: Path, work: Path, out_path: Path, settings: QuantizationSettings) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from model_export.lean import pre_process

    prepared = work / "model.prepared.onnx"
    # Shape inference over the fused contrib ops; without it quantize_dynamic misses
    # MatMuls whose input shapes it cannot see. (quant_pre_process, weights left on disk
    # when they are external.)
    pre_process(fused_path, prepared, skip_optimization=True, auto_merge=True)
    quantize_dynamic(
        str(prepared),
        str(out_path),
        weight_type=getattr(QuantType, settings.weight_type),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
    )


def write_tokenizer_json(tokenizer: Any, path: Path, max_length: int) -> None:
    """Save the fast tokenizer as the scorer reads it: truncating at max_length, no padding."""
    from tokenizers import Tokenizer

    # A transformers fast tokenizer, or (the light path) a tokenizers.Tokenizer itself.
    backend = Tokenizer.from_str(getattr(tokenizer, "backend_tokenizer", tokenizer).to_str())
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(path))


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
REFERENCES = {"light": "the fp32 ONNX graph", "optimum": "PyTorch fp32"}


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
            else torch_probabilities(model, tokenizer, parity_texts, max_length)
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
    skip_parity: bool = False,
    work_dir: Path | None = None,
    progress: Progress = no_progress,
    via: str = "light",
    test_model: str | None = None,
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
        with stage("fusing the transformer graph (onnxruntime optimizer)"):
            fused_path = work / "model.fused.onnx"
            optimization = _fuse(fp32_path, fused_path, config, 0 if via == "light" else None)
            optimization["fp32_exporter"] = EXPORTERS[via]
            if fp32_check is not None:
                optimization["fp32_check"] = fp32_check
            progress(f"fused: {optimization['fused_operators']}")
        with stage(
            f"quantising to int8 ({settings.weight_type}, per_channel={settings.per_channel})"
        ):
            model_path = staging / MODEL_FILE
            _quantize(fused_path, work, model_path, settings)
            ops = count_ops(model_path)
            int8_ops = {op: n for op, n in ops.items() if op in INT8_OPS}
            if not int8_ops:
                raise ExportError(
                    f"quantisation left {model_path} without any int8 operator "
                    f"({ops}): report this with --debug output"
                )
            progress(f"int8 operators: {int8_ops}")
        with stage("writing tokenizer.json"):
            tokenizer_path = staging / TOKENIZER_FILE
            write_tokenizer_json(tokenizer, tokenizer_path, max_length)
        parity: dict[str, Any] = {"skipped": True}
        if not skip_parity:
            with stage(
                f"checking parity of int8 against {REFERENCES[via]} on {len(parity_texts)} texts"
            ):
                if reference is None:
                    reference = onnx_probabilities(
                        fp32_path, tokenizer_path, parity_texts, pad_token_id, threads
                    )
                parity = _parity(
                    reference,
                    pad_token_id,
                    fused_path,
                    model_path,
                    tokenizer_path,
                    parity_texts,
                    threads,
                    tolerance,
                    REFERENCES[via],
                )
            progress(
                f"parity: max abs diff {parity['max_abs_diff']:.4f}, mean "
                f"{parity['mean_abs_diff']:.5f}, top label agreement "
                f"{parity['top_label_agreement']:.0%} (tolerance {tolerance.max_abs_diff})"
            )
        with stage("publishing the bundle"):
            manifest = Manifest(
                source_model_id=source_model_id or source,
                source_revision=source_revision or revision or "local",
                labels=LABELS,
                max_length=max_length,
                pad_token_id=pad_token_id,
                files={
                    MODEL_FILE: file_entry(model_path),
                    TOKENIZER_FILE: file_entry(tokenizer_path),
                },
                quantization={
                    **settings.to_json(),
                    "tool": "onnxruntime.quantization",
                    "int8_operators": int8_ops,
                    "operators": ops,
                },
                optimization=optimization,
                parity=parity,
                versions=package_versions(),
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                test_model=test_model,
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


def _parity(
    reference: np.ndarray,
    pad: int,
    fused_path: Path,
    int8_path: Path,
    tokenizer_path: Path,
    texts: Sequence[str],
    threads: int,
    tolerance: ParityTolerance,
    reference_name: str = "PyTorch fp32",
) -> dict[str, Any]:
    # fp32 ONNX first: when int8 fails, this tells an export bug from a quantisation loss.
    fp32 = compare_probabilities(
        reference,
        onnx_probabilities(fused_path, tokenizer_path, texts, pad, threads),
        texts,
        LABELS,
    )
    int8 = compare_probabilities(
        reference, onnx_probabilities(int8_path, tokenizer_path, texts, pad, threads), texts, LABELS
    )
    check_parity(fp32, ParityTolerance(max_abs_diff=1e-3), "the fused fp32 ONNX model")
    check_parity(int8, tolerance, "the int8 model")
    return {
        **int8.to_json(),
        "fp32_onnx_max_abs_diff": round(fp32.max_abs_diff, 8),
        "tolerance": tolerance.to_json(),
        "reference": f"{reference_name}, sigmoid of logits",
    }


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "MANIFEST_FILE",
    "QuantizationSettings",
    "StageClock",
    "count_ops",
    "default_model_dir",
    "export_bundle",
]
