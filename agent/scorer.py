"""The scorer: chat texts in, 11 emotion probabilities per text out.

Only onnxruntime, tokenizers and numpy are on this path (no torch, no transformers). A
`Scorer` is built from a verified `ModelBundle` (see agent/bundle.py) and does, per call:

1. `textprep.prepare` on every text (CardiffNLP preprocessing, emote words, safety);
2. cache look-up keyed by the *prepared* text, so "W", emote walls and copypastas are scored
   once; texts repeated inside one call are scored once too;
3. tokenisation of what is left (truncated at the manifest's max length, no padding);
4. length-sorted batches under a token budget, each padded only to its own longest
   sequence (dynamic padding), run through onnxruntime;
5. a sigmoid on the logits (the model is multi-label), rows put back in input order.

Any number of texts can be passed: the live agent hands over whatever is pending, so a
quiet chat gives small, low-latency calls and a busy one large sorted batches.

Batch composition and exactness: the int8 graph quantises activations on the fly
(DynamicQuantizeLinear), with one scale and zero point computed from the min/max of the
whole activation tensor, i.e. over every row of the batch, padding included. So the same
text can score slightly differently beside different batch-mates: on the full-size random
roberta-base, one-at-a-time against all-at-once differ by at most 0.0066 (mean 0.0014) in
probability. Exactness would need batches of one (about 20% slower here) or per-row scales
(not what onnxruntime's dynamic quantisation emits). Instead: the batch plan depends only on
the texts, not their order (shuffled input gives bit-identical scores), and with the cache
on a text keeps the score it first got, whatever batch it arrives in later.

onnxruntime releases the GIL while it runs, so `score` is meant to be called from a worker
thread. Calls are serialised by a lock: one session, one caller at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from agent.bundle import ModelBundle, load_bundle
from agent.errors import ModelBundleError
from agent.textprep import load_emote_table, prepare

DEFAULT_CACHE_SIZE = 50_000

# Batch limits. Sequences are sorted by length, so a batch's padded size is its count times
# its longest member. Tuned on the full-size random roberta-base int8 bundle, one thread,
# unique texts of the #xqcow capture (CPU time, AVX2 without VNNI, machine shared):
#   batches of 1: 40 msg/CPU-s; 16 seqs/1,024 tokens: 47-53; 32/1,024: 49;
#   64/2,048: 45-50; 128/4,096: 42; 256/16,384 with no padding cap: 15 (padding x3.9).
# Past ~32 sequences the activations (rows x 3,072 floats in the feed-forward layers) fall
# out of the CPU caches and throughput drops; small budgets also bound a burst's latency.
MAX_BATCH_SEQUENCES = 32
MAX_BATCH_TOKENS = 1_024
# A batch is also cut where joining it would make padding exceed this share of its real
# tokens: when few texts are pending, their lengths are spread out, and one 60-token message
# would otherwise pad thirty 6-token ones to 60 each. Busy chat has many texts of each length,
# so batches still fill up.
MAX_PADDING = 1.25

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# onnxruntime's own graph fusions that the export leaves out on purpose: the bundle's graph
# keeps Add + LayerNormalization and Add + Gelu unfused (profiled on roberta-base int8, one
# thread: the fused SkipLayerNormalization ran at 6.4-6.9 ns per element against 0.9 for
# Add + LayerNormalization, and BiasGelu slower than Add + Gelu), and onnxruntime would fuse
# them back when it loads the model unless told not to.
DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion", "BiasGeluFusion")

_ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls
    for name in (
        "Fail",
        "InvalidArgument",
        "InvalidProtobuf",
        "InvalidGraph",
        "NoSuchFile",
        "NoModel",
        "NotImplemented",
        "RuntimeException",
        "EPFail",
        "ModelLoaded",
        "EngineError",
    )
    if isinstance(cls := getattr(ort.capi.onnxruntime_pybind11_state, name, None), type)
)

_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class CacheInfo(NamedTuple):
    """Like functools' cache_info: `misses` counts texts the model ran on, `hits` the rest
    (found in the cache, or a copy of a text already scored in the same call)."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class RunStats(NamedTuple):
    """What the model actually ran on, for benchmarks: real tokens against padded ones."""

    batches: int
    sequences: int
    tokens: int  # real tokens, <s> and </s> included
    padded_tokens: int  # batch size x longest sequence, summed over batches


def plan_batches(
    lengths: Sequence[int],
    max_sequences: int = MAX_BATCH_SEQUENCES,
    max_tokens: int = MAX_BATCH_TOKENS,
    tie_keys: Sequence[Any] | None = None,
    max_padding: float = MAX_PADDING,
) -> list[list[int]]:
    """Group sequence indices into length-sorted batches.

    Indices are sorted by length, shortest first, and cut into batches of at most
    `max_sequences` whose padded size (count x longest) stays within `max_tokens` and within
    `max_padding` times the batch's real tokens. A sequence longer than the budget gets a
    batch of its own. Equal lengths are ordered by `tie_keys` (the texts, in the scorer) so
    the plan depends on what is scored, not on the order it came in; without them, by
    position.
    """
    keys: Sequence[Any] = tie_keys if tie_keys is not None else range(len(lengths))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], keys[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        # Sorted ascending, so this sequence is the batch's longest if it joins.
        padded = (len(current) + 1) * lengths[index]
        if current and (
            len(current) >= max_sequences
            or padded > max_tokens
            or padded > max_padding * (real + lengths[index])
        ):
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64, padded to the batch's longest sequence."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def feeds_for(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    tie_keys: Sequence[Any] | None = None,
) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """The scorer's batches for token sequences: (indices, {input_ids, attention_mask})."""
    lengths = [len(s) for s in sequences]
    out = []
    for batch in plan_batches(lengths, tie_keys=tie_keys):
        ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
        out.append((batch, {"input_ids": ids, "attention_mask": mask}))
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large negative logits."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


class Scorer:
    """Scores chat texts with an int8 ONNX emotion model. Build it with `Scorer.open`."""

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        threads: int = 1,
        cache_size: int = DEFAULT_CACHE_SIZE,
        translate_emotes: bool = True,
        emote_table: Path | None = None,
        max_batch_sequences: int = MAX_BATCH_SEQUENCES,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        max_padding: float = MAX_PADDING,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (off) or more, got {cache_size}")
        self.bundle = bundle
        self.labels: tuple[str, ...] = tuple(bundle.manifest.labels)
        self.model_id: str = bundle.model_id
        self.max_length = bundle.manifest.max_length
        self.threads = threads
        self.max_batch_sequences = max(1, max_batch_sequences)
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.max_padding = max(1.0, max_padding)
        self._emotes: Mapping[str, str] | None = (
            load_emote_table(emote_table) if translate_emotes else None
        )
        self._tokenizer = _open_tokenizer(bundle)
        self._session = open_session(bundle, threads)
        self._inputs = _check_inputs(bundle, self._session)
        output = self._session.get_outputs()[0]
        self._output_name: str = output.name
        # The manifest says whether the graph ends in logits (the scorer applies the sigmoid)
        # or in probabilities already (a second sigmoid would be wrong).
        self._outputs_probabilities = bundle.manifest.outputs == "probabilities"
        self._pad_id = bundle.manifest.pad_token_id
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._hits = 0
        self._misses = 0
        self._runs = RunStats(0, 0, 0, 0)
        self._lock = threading.Lock()
        # One warm-up run: a model that loads but cannot run (wrong output size, an operator
        # this onnxruntime lacks) fails here, at start-up, not on the first chat message;
        # and the first real message does not pay for onnxruntime's lazy initialisation.
        probe = self._run_batch([self._tokenizer.encode("")])
        if probe.shape != (1, len(self.labels)):
            raise ModelBundleError(
                f"{bundle.model_path} outputs {probe.shape[1:]} values per text, but the "
                f"manifest lists {len(self.labels)} labels: run `captaflow export-model` again"
            )

    @classmethod
    def open(
        cls,
        bundle_dir: Path,
        *,
        threads: int = 1,
        cache_size: int = DEFAULT_CACHE_SIZE,
        translate_emotes: bool = True,
        emote_table: Path | None = None,
    ) -> Scorer:
        """Verify the bundle at `bundle_dir` (checksums, labels) and build a scorer on it."""
        return cls(
            load_bundle(bundle_dir),
            threads=threads,
            cache_size=cache_size,
            translate_emotes=translate_emotes,
            emote_table=emote_table,
        )

    # -- public ------------------------------------------------------------------------------

    def prepare(self, text: str) -> str:
        """The text the model reads for `text`, with this scorer's emote setting."""
        return prepare(text, self._emotes)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, float32 of shape (len(texts), len(labels)), in input order."""
        with self._lock:
            return self._score(texts)

    def token_ids(self, text: str) -> list[int]:
        """The token ids the model reads for `text` (prepared, truncated, with <s> and </s>)."""
        return list(self._tokenizer.encode(self.prepare(text)).ids)

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, self._cache_size, len(self._cache))

    def run_stats(self) -> RunStats:
        return self._runs

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    # -- internals ---------------------------------------------------------------------------

    def _score(self, texts: Sequence[str]) -> np.ndarray:
        n_labels = len(self.labels)
        result = np.empty((len(texts), n_labels), dtype=np.float32)
        if not texts:
            return result
        prepared = [prepare(t, self._emotes) for t in texts]
        if self._cache_size == 0:
            # Cache off means no reuse at all, not even inside one call: every text is run
            # through the model (what the benchmark's "without cache" figure measures).
            self._misses += len(prepared)
            return self._run_texts(prepared)
        # Each distinct prepared text missing from the cache is scored once, whatever the
        # number of times it occurs in this call; the other occurrences count as hits.
        todo: dict[str, list[int]] = {}
        for position, text in enumerate(prepared):
            row = self._cache.get(text)
            if row is not None:
                self._cache.move_to_end(text)
                result[position] = row
            else:
                todo.setdefault(text, []).append(position)
        self._misses += len(todo)
        self._hits += len(prepared) - len(todo)
        if not todo:
            return result
        unique = list(todo)
        scores = self._run_texts(unique)
        for text, row in zip(unique, scores, strict=True):
            result[todo[text]] = row
            self._cache_put(text, row)
        return result

    def _run_texts(self, prepared: Sequence[str]) -> np.ndarray:
        """Tokenise, batch by length and run; rows in the order of `prepared`."""
        if self.threads == 1:
            # encode_batch would fan out over every core (Rust threads); on one thread the
            # scorer promises to use one core.
            encodings = [self._tokenizer.encode(t) for t in prepared]
        else:
            encodings = self._tokenizer.encode_batch(list(prepared))
        scores = np.empty((len(prepared), len(self.labels)), dtype=np.float32)
        lengths = [len(e.ids) for e in encodings]
        plan = plan_batches(
            lengths, self.max_batch_sequences, self.max_batch_tokens, prepared, self.max_padding
        )
        for batch in plan:
            scores[batch] = self._run_batch([encodings[i] for i in batch])
            width = max(lengths[i] for i in batch)
            self._runs = RunStats(
                self._runs.batches + 1,
                self._runs.sequences + len(batch),
                self._runs.tokens + sum(lengths[i] for i in batch),
                self._runs.padded_tokens + width * len(batch),
            )
        return scores

    def _cache_put(self, text: str, row: np.ndarray) -> None:
        if self._cache_size == 0:
            return
        stored = row.copy()
        stored.flags.writeable = False
        self._cache[text] = stored
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _run_batch(self, encodings: Sequence[Encoding]) -> np.ndarray:
        ids, mask = pad_batch([e.ids for e in encodings], self._pad_id)
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._inputs}
        try:
            (logits,) = self._session.run([self._output_name], feeds)
        except _ORT_ERRORS as exc:
            raise ModelBundleError(
                f"{self.bundle.model_path} failed to run ({_one_line(exc)}): run "
                f"`captaflow export-model` again to rebuild the model"
            ) from exc
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(encodings):
            raise ModelBundleError(
                f"{self.bundle.model_path} returned shape {logits.shape} for "
                f"{len(encodings)} texts: run `captaflow export-model` again"
            )
        return logits if self._outputs_probabilities else sigmoid(logits)


# -- opening the pieces ------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _open_tokenizer(bundle: ModelBundle) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses of its own
        raise ModelBundleError(
            f"{bundle.tokenizer_path} is not a usable tokenizer ({_one_line(exc)}): run "
            f"`captaflow export-model` again"
        ) from exc
    # Truncation counts the special tokens (<s>, </s>) the post-processor adds, so no
    # sequence exceeds the model's positions. Padding is ours, per batch.
    tokenizer.enable_truncation(max_length=bundle.manifest.max_length)
    tokenizer.no_padding()
    return tokenizer


def session_options(threads: int) -> ort.SessionOptions:
    """The options every CaptaFlow session runs with (the export's parity check included)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads that spin while waiting for work burn a core the game needs; the scorer runs
    # in bursts, so let them sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about fused nodes are noise here
    return options


def open_session(
    bundle: ModelBundle, threads: int, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """An onnxruntime session on the bundle's model, as the scorer runs it."""
    try:
        return ort.InferenceSession(
            str(bundle.model_path),
            sess_options=options or session_options(threads),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise ModelBundleError(
            f"{bundle.model_path} cannot be loaded by onnxruntime {ort.__version__} "
            f"({_one_line(exc)}): run `captaflow export-model` again"
        ) from exc


def _check_inputs(bundle: ModelBundle, session: ort.InferenceSession) -> list[tuple[str, Any]]:
    """The (name, numpy dtype) of each input the graph declares; only known ones allowed."""
    declared = session.get_inputs()
    names = [i.name for i in declared]
    unknown = [n for n in names if n not in KNOWN_INPUTS]
    if "input_ids" not in names or unknown:
        raise ModelBundleError(
            f"{bundle.model_path} takes inputs {names}, but the scorer feeds "
            f"{list(KNOWN_INPUTS)} (input_ids required): run `captaflow export-model` again"
        )
    return [(i.name, _NUMPY_TYPES.get(i.type, np.int64)) for i in declared]
