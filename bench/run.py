"""CaptaFlow's scorer against the original prototype's approach, in one run, on one core.

    python bench/run.py [--quick] [--corpus synthetic|capture|both] [--model-dir DIR]
                        [--out bench/RESULTS.md]

All variants run on the same full-size roberta-base with random weights: the source is built
once (model_export.build_random_base_source), exported through the real int8 path
(model_export.export_bundle), and PyTorch loads the same source directory. `--model-dir`
keeps both (DIR/source, DIR/bundle) so a re-run skips the export.

Variants, on the same messages:
  a  original: transformers pipeline(top_k=None), PyTorch fp32, pipe(list_of_10)
  b  original with batch_size=10: pipe(list_of_10, batch_size=10)
  c  CaptaFlow scorer, int8 ONNX, cache off: live chunks (what is pending) and lists of 10
  d  CaptaFlow scorer with its cache: live chunks and lists of 10

Prints a table and writes RESULTS.md; the last two lines of both are machine-readable:
`speedup_vs_original: <c, live chunks / best of a, b>` and `speedup_with_cache: <d / same>`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.corpus import CAPTURE_NAME, corpus_shape, load_capture, synthetic_chat  # noqa: E402

CAPTURE = ROOT.parent / "shared" / "testdata" / CAPTURE_NAME

# roberta-base's encoder: 12 layers x (4 x 768^2 attention projections + 2 x 768 x 3072 FFN)
# multiply-adds, 2 ops each = 170 MFLOP per token (attention scores, which stay fp32 and are
# tiny for chat-length sequences, and the embeddings/head are left out).
FLOP_PER_TOKEN = 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072)
# Peak int8 throughput of one AVX2 core without VNNI: onnxruntime's u8s8 GEMM kernel does 32
# multiply-adds per VPMADDUBSW (ymm) and needs a VPMADDWD to widen the int16 pairs; both run
# on the vector multiply pipes, of which these cores have two, so 32 MAC = 64 ops per cycle.
INT8_OPS_PER_CYCLE_AVX2 = 64
# With AVX-VNNI / AVX512-VNNI, VPDPBUSD does the multiply-add-widen in one instruction.
INT8_OPS_PER_CYCLE_VNNI256 = 128

LIST_SIZE = 10  # the prototype scored lists of 10 messages
TARGET_NO_CACHE = 5.0
TARGET_CACHE = 8.0
TARGET_STARTUP_S = 1.5
TARGET_RSS_MB = 400.0


# --------------------------------------------------------------------------------- machine


def pin_one_core() -> str:
    """Pin this process (and the subprocesses it starts) to one core, where the OS allows."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no os.sched_setaffinity on this OS)"
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} (os.sched_setaffinity)"


def limit_threads() -> None:
    """One thread for every math library, set before torch/onnxruntime are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_flags() -> dict[str, bool]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if not flags:
        with contextlib.suppress(Exception):
            import cpuinfo  # py-cpuinfo, optional

            flags = set(cpuinfo.get_cpu_info().get("flags", []))
    return {name: name in flags for name in wanted}


def cpu_model_and_clock() -> tuple[str, float | None, str]:
    """CPU model name, clock in GHz and where the clock came from."""
    model, mhz = platform.processor() or platform.machine(), None
    source = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "cpu MHz" and mhz is None:
                mhz, source = float(value), "/proc/cpuinfo cpu MHz"
    if mhz is None:
        with contextlib.suppress(Exception):
            import psutil

            freq = psutil.cpu_freq()
            if freq and freq.current:
                mhz, source = float(freq.current), "psutil.cpu_freq"
    return model, (mhz / 1000.0 if mhz else None), source


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "onnxruntime", "tokenizers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def load_text() -> str:
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"
    return "unknown (no os.getloadavg)"


# ------------------------------------------------------------------------------ pure maths


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def padded_tokens(batches: Sequence[Sequence[int]]) -> int:
    """Tokens a model computes for batches of sequence lengths, each padded to its longest."""
    return sum(len(b) * max(b) for b in batches if b)


def unsorted_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Lengths cut into consecutive batches of `size` in arrival order (no sorting)."""
    return [list(lengths[i : i + size]) for i in range(0, len(lengths), size)]


def int8_peak_ops(clock_ghz: float, flags: dict[str, bool]) -> tuple[float, str]:
    vnni = flags.get("avx512_vnni") or flags.get("avx_vnni")
    per_cycle = INT8_OPS_PER_CYCLE_VNNI256 if vnni else INT8_OPS_PER_CYCLE_AVX2
    path = "VPDPBUSD (VNNI)" if vnni else "AVX2 VPMADDUBSW+VPMADDWD"
    return clock_ghz * 1e9 * per_cycle, f"{clock_ghz:.2f} GHz x {per_cycle} int8 ops/cycle ({path})"


# ------------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One variant on one corpus."""

    name: str
    call: str  # how the texts were handed over
    messages: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds per call
    cpu_seconds: float = 0.0  # CPU time this process used: what an idle core would take
    cpu_latencies: list[float] = field(default_factory=list)
    call_size: int = LIST_SIZE
    real_tokens: int = 0  # tokens of the texts that reached the model
    padded: int = 0  # tokens the model computed, padding included
    note: str = ""

    @property
    def wall_rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def rate(self) -> float:
        """Messages per CPU second: the machine is shared, so wall time includes waiting."""
        return self.messages / self.cpu_seconds if self.cpu_seconds else 0.0

    def p(self, q: float) -> float:
        """Percentile of the CPU time per call, in ms."""
        return percentile(self.cpu_latencies, q) * 1000.0 if self.cpu_latencies else float("nan")

    def p_wall(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0 if self.latencies else float("nan")


def timed_calls(
    run: Run,
    fn: Callable[[list[str]], object],
    texts: Sequence[str],
    size: int,
    min_seconds: float = 0.0,
) -> Run:
    """Call `fn` on consecutive slices of `size`, filling `run`'s counts and times; stop at
    the end or once `min_seconds` of CPU time have been used (0: go through all texts)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for block in chunks(texts, size):
        w, c = time.perf_counter(), time.process_time()
        fn(block)
        run.latencies.append(time.perf_counter() - w)
        run.cpu_latencies.append(time.process_time() - c)
        run.messages += len(block)
        if min_seconds and time.process_time() - cpu0 >= min_seconds:
            break
    run.seconds = time.perf_counter() - wall0
    run.cpu_seconds = time.process_time() - cpu0
    run.call_size = size
    return run


def original_runs(
    source_dir: Path, texts: Sequence[str], min_seconds: float, max_length: int
) -> tuple[list[Run], int]:
    """Variants a and b: the prototype's pipeline on PyTorch fp32, one thread."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable once per process
        torch.set_num_interop_threads(1)
    pipe = pipeline("text-classification", model=str(source_dir), top_k=None, device="cpu")
    tokenizer = pipe.tokenizer
    # The prototype passes no truncation; the real capture holds a 1,352-token message that
    # would overflow roberta's 512 positions, so both sides truncate at the bundle's length.
    kwargs = {"truncation": True, "max_length": max_length}
    lengths = [len(ids) for ids in tokenizer(list(texts), **kwargs)["input_ids"]]
    pipe(list(texts[:LIST_SIZE]), **kwargs)  # warm-up
    runs = []
    for name, call, extra in (
        ("a original", "pipe(list_of_10)", {}),
        ("b original batch_size=10", "pipe(list_of_10, batch_size=10)", {"batch_size": 10}),
    ):
        with torch.inference_mode():
            run = timed_calls(
                Run(name, call),
                lambda block, e=extra: pipe(block, **kwargs, **e),
                texts,
                LIST_SIZE,
                min_seconds,
            )
        used = lengths[: run.messages]
        run.real_tokens = sum(used)
        run.padded = padded_tokens(unsorted_batches(used, 1 if not extra else LIST_SIZE))
        run.note = f"first {run.messages} messages (>= {min_seconds:.0f} CPU s)"
        runs.append(run)
    return runs, len(texts)


def scorer_runs(bundle_dir: Path, texts: Sequence[str], chunk: int) -> tuple[list[Run], dict]:
    """Variants c and d: CaptaFlow's scorer, on one thread, over all `texts`."""
    from tokenizers import Tokenizer

    from agent.bundle import load_bundle
    from agent.scorer import MAX_BATCH_SEQUENCES, MAX_BATCH_TOKENS, Scorer, plan_batches

    nocache = Scorer.open(bundle_dir, threads=1, cache_size=0)
    bundle = load_bundle(bundle_dir)
    tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
    tokenizer.enable_truncation(bundle.manifest.max_length)  # as the scorer truncates
    prepared = [nocache.prepare(t) for t in texts]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(prepared)]

    def plan_padding(size: int) -> tuple[int, int]:
        sorted_total = unsorted_total = 0
        for i in range(0, len(texts), size):
            block = lengths[i : i + size]
            plan = plan_batches(
                block, MAX_BATCH_SEQUENCES, MAX_BATCH_TOKENS, prepared[i : i + size]
            )
            sorted_total += padded_tokens([[block[j] for j in b] for b in plan])
            unsorted_total += padded_tokens(unsorted_batches(block, MAX_BATCH_SEQUENCES))
        return sorted_total, unsorted_total

    runs: list[Run] = []
    for size, call in ((chunk, f"score(chunk of {chunk})"), (LIST_SIZE, "score(list_of_10)")):
        run = timed_calls(Run("c int8, no cache", call), nocache.score, texts, size)
        run.real_tokens, run.padded = sum(lengths), plan_padding(size)[0]
        runs.append(run)
    for size, call in ((chunk, f"score(chunk of {chunk})"), (LIST_SIZE, "score(list_of_10)")):
        cached = Scorer.open(bundle_dir, threads=1)  # default cache, empty at the start
        run = timed_calls(Run("d int8, cache", call), cached.score, texts, size)
        info = cached.cache_info()
        run.note = f"cache cold at start; {info.hits} hits, {info.misses} model runs"
        runs.append(run)
    sorted_pad, unsorted_pad = plan_padding(chunk)
    padding = {
        "real": sum(lengths),
        "lists of 10, arrival order (pipeline batch_size=10)": padded_tokens(
            unsorted_batches(lengths, LIST_SIZE)
        ),
        f"chunks of {chunk}, arrival order, batches of {MAX_BATCH_SEQUENCES}": unsorted_pad,
        f"chunks of {chunk}, length-sorted plan (scorer)": sorted_pad,
    }
    return runs, padding


# ------------------------------------------------------------------ fresh-process figures

# Runs in a fresh interpreter: imports only agent.scorer, opens the bundle, scores one text
# (start-up ends there), then scores the corpus in live chunks; reports peak RSS.
CHILD = r"""
import json, sys
from agent.scorer import Scorer
scorer = Scorer.open(sys.argv[1], threads=1)
scorer.score(["first message"])
print("first-score", flush=True)
texts = json.load(open(sys.argv[2], encoding="utf-8"))
size = int(sys.argv[3])
for i in range(0, len(texts), size):
    scorer.score(texts[i:i + size])
peak = None
try:
    # VmHWM: the peak resident set of this program. ru_maxrss would not do on Linux: it
    # survives exec, so it reports the (much larger) benchmark process that forked us.
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
except OSError:
    pass
if peak is None:
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 1048576 if sys.platform == "darwin" else peak / 1024
    except ImportError:
        import psutil
        info = psutil.Process().memory_info()
        peak = getattr(info, "peak_wset", info.rss) / 1048576
print(json.dumps({"peak_rss_mb": peak}), flush=True)
"""


def fresh_process(bundle_dir: Path, texts: Sequence[str], chunk: int) -> tuple[float, float]:
    """(seconds from process start to the first score, peak RSS in MB) of a fresh scorer."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as fh:
        json.dump(list(texts), fh)
        corpus_file = fh.name
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", CHILD, str(bundle_dir), corpus_file, str(chunk)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        startup = time.perf_counter() - start
        # Read through the same buffered pipe: communicate(timeout=...) would read the raw
        # descriptor and lose what readline already buffered.
        rest = proc.stdout.read()
        proc.wait()
        if proc.returncode != 0 or first.strip() != "first-score":
            raise RuntimeError(f"scorer subprocess failed (exit {proc.returncode})")
        peak = json.loads(rest.strip().splitlines()[-1])["peak_rss_mb"]
        return startup, float(peak)
    finally:
        os.unlink(corpus_file)


# ----------------------------------------------------------------------------- the model


def ensure_model(model_dir: Path | None) -> tuple[Path, Path, str]:
    """(source dir, bundle dir, what happened): reuse DIR/source + DIR/bundle, else build."""
    from agent.bundle import load_bundle

    root = model_dir or Path(tempfile.mkdtemp(prefix="captaflow-bench-"))
    source, bundle = root / "source", root / "bundle"
    if (source / "model.safetensors").is_file() and (bundle / "manifest.json").is_file():
        load_bundle(bundle)
        return source, bundle, f"reused {root}"
    from model_export import StageClock, build_random_base_source, export_bundle
    from model_export.parity import RANDOM_MODEL_TOLERANCE
    from model_export.tiny import RANDOM_BASE_MODEL_ID

    clock = StageClock(sys.stdout)
    clock(f"building the random-weight roberta-base source in {source}")
    build_random_base_source(source, 0)
    export_bundle(
        source,
        bundle,
        source_model_id=RANDOM_BASE_MODEL_ID,
        source_revision="random-seed-0",
        tolerance=RANDOM_MODEL_TOLERANCE,
        threads=1,
        progress=clock,
    )
    return source, bundle, f"built and exported into {root}"


# ---------------------------------------------------------------------------------- report


def fmt_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = [fmt_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return lines + [fmt_row(r, widths) for r in rows]


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, short runs (~2 min)")
    parser.add_argument("--corpus", choices=("synthetic", "capture", "both"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--model-dir", type=Path, default=None, help="keep/reuse source+bundle")
    parser.add_argument("--messages", type=int, default=None, help="synthetic corpus size")
    parser.add_argument(
        "--capture-messages",
        type=int,
        default=None,
        help="first N messages of the capture (0: all 4,933; default 1,500, quick 300)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=100, help="live chunk size (pending msgs)")
    parser.add_argument("--min-seconds", type=float, default=None, help="per PyTorch variant")
    args = parser.parse_args(argv)

    limit_threads()
    pinned = pin_one_core()
    n_synthetic = args.messages or (300 if args.quick else 1500)
    n_capture = (
        args.capture_messages
        if args.capture_messages is not None
        else (300 if args.quick else 1500)
    )
    min_seconds = args.min_seconds or (5.0 if args.quick else 20.0)
    started = time.time()
    load_before = load_text()
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    source, bundle_dir, how = ensure_model(args.model_dir)
    from agent.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    flags = cpu_flags()
    model_name, clock, clock_source = cpu_model_and_clock()
    peak_ops, peak_desc = int8_peak_ops(clock or 0.0, flags)
    int8_mb = bundle.model_path.stat().st_size / 1e6
    fp32_mb = (source / "model.safetensors").stat().st_size / 1e6

    corpora: list[tuple[str, list[str]]] = []
    if args.corpus in ("synthetic", "both"):
        corpora.append((f"synthetic (seed {args.seed})", synthetic_chat(n_synthetic, args.seed)))
    capture_note = ""
    if args.corpus in ("capture", "both"):
        if CAPTURE.is_file():
            texts = load_capture(CAPTURE)
            if n_capture:
                texts = texts[:n_capture]
            corpora.append((f"capture {CAPTURE.name}", texts))
        else:
            capture_note = f"capture skipped: {CAPTURE} is absent"

    emit(f"# CaptaFlow scorer benchmark ({'quick' if args.quick else 'full'} run)")
    emit()
    emit(f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    emit(f"- command: `python bench/run.py {shlex.join(sys.argv[1:] if argv is None else argv)}`")
    emit(
        f"- machine: {model_name}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} logical CPUs; {pinned}; 1 thread (torch.set_num_threads(1), "
        f"onnxruntime intra_op 1)"
    )
    emit("- CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    emit(f"- clock: {clock:.2f} GHz ({clock_source})" if clock else "- clock: unknown")
    emit("- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    emit(
        f"- model: full-size roberta-base, random weights (seed 0), {how}; "
        f"quantisation {json.dumps(bundle.manifest.quantization.get('weight_type'))}, "
        f"per_channel={bundle.manifest.quantization.get('per_channel')}"
    )
    emit(
        f"- model size: int8 ONNX {int8_mb:.1f} MB vs fp32 safetensors {fp32_mb:.1f} MB "
        f"({fp32_mb / int8_mb:.2f}x smaller)"
    )
    emit(f"- load average at start: {load_before} (other jobs share the machine: noisy)")
    emit(
        "- rates and ratios use this process's CPU time (time.process_time; one thread on one "
        "core, so it is what an idle core would take); wall-clock rates, which include "
        "waiting for the shared core, are shown beside them"
    )
    if capture_note:
        emit(f"- {capture_note}")
    emit()

    headline: tuple[float, float] | None = None
    for corpus_name, texts in corpora:
        from tokenizers import Tokenizer

        raw_tok = Tokenizer.from_file(str(bundle.tokenizer_path))
        raw_tok.enable_truncation(bundle.manifest.max_length)
        raw_lengths = [len(e.ids) for e in raw_tok.encode_batch(texts)]
        untruncated = Tokenizer.from_file(str(source / "tokenizer.json"))
        untruncated.no_truncation()
        full_max = max(len(e.ids) for e in untruncated.encode_batch(texts))
        shape = corpus_shape(texts, raw_lengths)
        emit(f"## Corpus: {corpus_name}")
        emit()
        emit(
            f"- {shape.describe()} (as written, truncated at {bundle.manifest.max_length}; "
            f"longest untruncated: {full_max})"
        )

        originals, _ = original_runs(source, texts, min_seconds, bundle.manifest.max_length)
        ours, padding = scorer_runs(bundle_dir, texts, args.chunk)
        best = max(originals, key=lambda r: r.rate)
        emit(
            "- texts the scorer's model reads (textprep + emote words): "
            f"{padding['real'] / len(texts):.1f} tokens per message on average"
        )
        emit(
            f"- PyTorch variants: first N messages until >= {min_seconds:.0f} CPU s each; "
            f"scorer variants: all {len(texts)} messages, in order, as live chunks of "
            f"{args.chunk} (what ~10 pending windows of 10 hold) and as lists of 10"
        )
        emit()
        rows = []
        for r in originals + ours:
            compute = ""
            if r.real_tokens and r.name.startswith("c") and peak_ops:
                compute = f"{r.real_tokens / r.cpu_seconds * FLOP_PER_TOKEN / peak_ops:.0%}"
            rows.append(
                [
                    r.name,
                    r.call,
                    str(r.messages),
                    f"{r.cpu_seconds:.1f} / {r.seconds:.1f}",
                    f"{r.rate:.1f}",
                    f"{r.wall_rate:.1f}",
                    f"{r.rate / best.rate:.2f}x",
                    f"{r.p(50):.0f} / {r.p(99):.0f}",
                    f"{r.p_wall(50):.0f} / {r.p_wall(99):.0f}",
                    f"{r.padded / r.real_tokens:.2f}x" if r.real_tokens else "-",
                    compute,
                ]
            )
        for line in table(
            [
                "variant",
                "call",
                "N msgs",
                "CPU s / wall s",
                "msg/s (CPU)",
                "msg/s (wall)",
                "vs best original",
                "p50/p99 ms per call (CPU)",
                "p50/p99 ms (wall)",
                "padded/real tok",
                "int8 bound",
            ],
            rows,
        ):
            emit(line)
        emit()
        live_nc = next(r for r in ours if r.name.startswith("c") and r.call_size == args.chunk)
        list_nc = next(r for r in ours if r.name.startswith("c") and r.call_size == LIST_SIZE)
        live_c = next(r for r in ours if r.name.startswith("d") and r.call_size == args.chunk)
        for r in ours:
            if r.note:
                emit(f"- {r.name}, {r.call}: {r.note}")
        for r in originals:
            emit(f"- {r.name}: {r.note}")
        real_rate = live_nc.real_tokens / live_nc.cpu_seconds
        padded_rate = live_nc.padded / live_nc.cpu_seconds
        emit(
            f"- int8 compute bound: real tokens/s x {FLOP_PER_TOKEN / 1e6:.0f} MFLOP / peak "
            f"{peak_ops / 1e9:.0f} GOPS ({peak_desc}); live no-cache {real_rate:.0f} real "
            f"tok/s = {real_rate * FLOP_PER_TOKEN / peak_ops:.0%}, counting padding "
            f"{padded_rate * FLOP_PER_TOKEN / peak_ops:.0%}"
        )
        emit(
            "- padding overhead (padded / real tokens of the scorer's texts): "
            + "; ".join(
                f"{k}: {v / padding['real']:.2f}x" for k, v in padding.items() if k != "real"
            )
        )
        ratio_nc = live_nc.rate / best.rate
        ratio_c = live_c.rate / best.rate
        emit(
            f"- like-for-like lists of 10: no cache {list_nc.rate / best.rate:.2f}x, "
            f"p50 {list_nc.p(50):.0f} ms vs {best.p(50):.0f} ms per list"
        )
        emit(
            f"- targets vs the faster original ({best.name}, {best.rate:.1f} msg/s): "
            f"no cache {ratio_nc:.2f}x (>= {TARGET_NO_CACHE:g}x: "
            f"{verdict(ratio_nc >= TARGET_NO_CACHE)}), cache {ratio_c:.2f}x "
            f"(>= {TARGET_CACHE:g}x: {verdict(ratio_c >= TARGET_CACHE)})"
        )
        emit()
        if headline is None:
            headline = (ratio_nc, ratio_c)
        startup_texts = texts

    if not corpora:
        emit("no corpus to run")
        return 1
    emit("## Fresh scorer process (imports agent.scorer only, loads the bundle, scores)")
    emit()
    startups, peaks = [], []
    for attempt in range(1 if args.quick else 3):
        # The corpus is scored (for peak RSS) in the first process only; the others time
        # start-up again with the files in the OS cache.
        s, p = fresh_process(bundle_dir, startup_texts if attempt == 0 else [], args.chunk)
        startups.append(s)
        peaks.append(p)
    startup, peak = statistics.median(startups), max(peaks)
    emit(
        f"- start-up to first score: {startup:.2f} s median of {len(startups)} "
        f"({', '.join(f'{s:.2f}' for s in startups)}) (< {TARGET_STARTUP_S} s: "
        f"{verdict(startup < TARGET_STARTUP_S)})"
    )
    emit(
        f"- peak RSS scoring the last corpus in chunks of {args.chunk}: {peak:.0f} MB "
        f"(VmHWM; ru_maxrss on macOS) (< {TARGET_RSS_MB:.0f} MB: {verdict(peak < TARGET_RSS_MB)})"
    )
    emit(f"- load average at end: {load_text()}; run took {time.time() - started:.0f} s")
    emit()
    assert headline is not None
    emit(f"speedup_vs_original: {headline[0]:.2f}")
    emit(f"speedup_with_cache: {headline[1]:.2f}")
    args.out.write_text("\n".join(out) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
