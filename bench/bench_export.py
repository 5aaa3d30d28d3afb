"""Peak memory and time of the one-time export, per path, in one run.

    python bench/bench_export.py [--kind random-base|tiny] [--via light optimum ...]
                                 [--threads N] [--out bench/RESULTS-export.md]

Each variant runs `python -m model_export --<kind> --via <path> --out TMP` as a child
process (exactly what a user runs) while this script samples the resident memory of the
child's whole process tree (psutil, every 50 ms) and reads the export's own stage lines
(`[  12.3s] stage ...` on stderr), so the peak is attributed to the stage it happened in.
Also reported: the tree's peak from the kernel (`ru_maxrss` of the waited-for children, the
largest single process) and wall and CPU time. `--via none` runs the command without the
flag (for a checkout older than the flag). The machine may be shared: CPU time and the load
average are printed beside wall time; the memory figures do not depend on the load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# Runs `python -m model_export` as on a machine without torch, transformers and optimum
# (what `pip install captaflow[export]` gives): the path finder does not find them.
HIDE_HEAVY = """
import importlib.abc, importlib.machinery, runpy, sys
HEAVY = ("torch", "transformers", "optimum")
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    def find_distributions(self, *args, **kwargs):
        for dist in importlib.machinery.PathFinder.find_distributions(*args, **kwargs):
            if (dist.metadata["Name"] or "").lower() not in HEAVY:
                yield dist
sys.meta_path[:] = [Absent() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv[0] = "model_export"
runpy.run_module("model_export", run_name="__main__", alter_sys=True)
"""
STAGE_LINE = re.compile(r"^\[\s*([0-9.]+)s\] (.*)$")
SAMPLE_S = 0.05


@dataclass
class Run:
    via: str
    command: list[str]
    status: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_tree_mb: float = 0.0
    peak_stage: str = ""
    maxrss_mb: float = 0.0
    torch_imported: bool | None = None
    stages: list[tuple[float, str, float]] = field(default_factory=list)  # (t, line, peak MB)
    stderr_tail: list[str] = field(default_factory=list)


def _tree_rss(proc: psutil.Process, look_for_torch: bool = False) -> tuple[int, bool]:
    """Resident bytes of `proc` and its descendants; and whether any has torch's libraries
    mapped (checked only when asked: reading the maps is slower than the RSS)."""
    total, torch_seen = 0, False
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, False
    for p in family:
        try:
            total += p.memory_info().rss
            if look_for_torch and not torch_seen:
                torch_seen = any("/torch/lib/" in m.path for m in p.memory_maps(grouped=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total, torch_seen


def measure(via: str, kind: str, threads: int, python: str) -> Run:
    """`via` is light, optimum, none (no --via flag), or light-no-torch (light, with torch,
    transformers and optimum hidden as if not installed)."""
    hide = via.endswith("-no-torch")
    with tempfile.TemporaryDirectory(prefix="captaflow-bench-export-") as scratch:
        command = [
            python,
            *(["-c", HIDE_HEAVY] if hide else ["-m", "model_export"]),
            f"--{kind}",
            "--out",
            str(Path(scratch) / "bundle"),
            "--threads",
            str(threads),
        ]
        if via != "none":
            command += ["--via", via.removesuffix("-no-torch")]
        run = Run(via=via, command=command)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        child = subprocess.Popen(
            command, env=env, cwd=str(ROOT), stderr=subprocess.PIPE, text=True, bufsize=1
        )
        proc = psutil.Process(child.pid)
        stage = ["starting"]
        stage_peak = [0.0]
        lock = threading.Lock()
        torch_maps = [False]

        def read_stderr() -> None:
            assert child.stderr is not None
            for line in child.stderr:
                line = line.rstrip("\n")
                run.stderr_tail = [*run.stderr_tail[-20:], line]
                match = STAGE_LINE.match(line)
                if match:
                    with lock:
                        run.stages.append((float(match.group(1)), stage[0], stage_peak[0]))
                        stage[0], stage_peak[0] = match.group(2), 0.0

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        samples = 0
        while True:
            # wait4 reports this child's own peak and CPU time (RUSAGE_CHILDREN would keep
            # the largest of every child this script ever waited for).
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                break
            rss, torch_seen = _tree_rss(proc, look_for_torch=samples % 20 == 0)
            torch_maps[0] = torch_maps[0] or torch_seen
            mb = rss / 1e6
            with lock:
                stage_peak[0] = max(stage_peak[0], mb)
                if mb > run.peak_tree_mb:
                    run.peak_tree_mb, run.peak_stage = mb, stage[0]
            samples += 1
            time.sleep(SAMPLE_S)
        reader.join(timeout=5)
        run.wall_s = time.monotonic() - start
        with lock:
            run.stages.append((run.wall_s, stage[0], stage_peak[0]))
        run.status = child.returncode
        run.cpu_s = usage.ru_utime + usage.ru_stime
        run.maxrss_mb = usage.ru_maxrss * 1024 / 1e6  # KiB on Linux: the largest process
        run.torch_imported = torch_maps[0]
        return run


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def report(runs: list[Run], kind: str, threads: int) -> str:
    lines = [
        "# The one-time export: peak memory and time",
        "",
        f"`python3 bench/bench_export.py --kind {kind} --via {' '.join(r.via for r in runs)}"
        f" --threads {threads}`, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 1e9:.0f} GB RAM, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"onnxruntime {_version('onnxruntime')}, onnx {_version('onnx')}, "
        f"torch {_version('torch')}, optimum {_version('optimum')}.",
        "",
        "| path | status | peak RSS, process tree | where | ru_maxrss | wall | CPU | torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| `{r.via}` | {r.status} | {r.peak_tree_mb:,.0f} MB | {r.peak_stage} | "
            f"{r.maxrss_mb:,.0f} MB | {r.wall_s:.0f} s | {r.cpu_s:.0f} s | "
            f"{'yes' if r.torch_imported else 'no'} |"
        )
    for r in runs:
        lines += ["", f"Stages of `{r.via}` (start, peak RSS of the tree during the stage):", ""]
        lines += ["| from | stage | peak |", "|---|---|---|"]
        previous = 0.0
        for end, name, peak in r.stages:
            if end > previous or name == "starting":  # progress lines take no time
                lines.append(f"| {previous:.1f} s | {name[:90]} | {peak:,.0f} MB |")
            previous = end
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("random-base", "tiny"), default="random-base")
    parser.add_argument("--via", nargs="+", default=["optimum", "light"])
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()
    runs = []
    for via in args.via:
        print(f"measuring --via {via} ...", file=sys.stderr, flush=True)
        run = measure(via, args.kind, args.threads, args.python)
        if run.status != 0:
            print("\n".join(run.stderr_tail), file=sys.stderr)
        runs.append(run)
    text = report(runs, args.kind, args.threads)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    for r in runs:
        print(f"peak_rss_mb_{r.via}: {r.peak_tree_mb:.0f}")
    return 0 if all(r.status == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
