"""`python -m model_export` and `captaflow export-model`: one command, one exit status.

Exit status 0 when the bundle is published, 2 for bad usage, 1 for any other failure,
which is reported as one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, NoReturn

from agent.errors import CaptaFlowError, ExportError, UsageError
from agent.vocab import MODEL_ID
from model_export.export import (
    DEFAULT_MAX_LENGTH,
    StageClock,
    default_model_dir,
    export_bundle,
    fp32_head_inputs,
    intermediate_dir_for,
    stand_in_source_dir,
)
from model_export.parity import (
    RANDOM_MODEL_TOLERANCE,
    REAL_MODEL_TOLERANCE,
    STAND_IN_TOLERANCE,
)
from model_export.parity_texts import CALIBRATION_TEXTS
from model_export.standin import (
    STAND_IN_LABEL,
    STAND_IN_MODEL_ID,
    STAND_IN_SMALL_LABEL,
    STAND_IN_SMALL_MODEL_ID,
    build_stand_in_source,
)
from model_export.tiny import (
    RANDOM_BASE_LABEL,
    RANDOM_BASE_MODEL_ID,
    TINY_LABEL,
    TINY_MODEL_ID,
    build_random_base_source,
    build_tiny_source,
)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefixes: `--model X` (the agent's option) must not pass as `--model-id X`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(prog: str = "python -m model_export") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=(
            "Export the CardiffNLP emotion model once into CaptaFlow's int8 ONNX bundle "
            "(downloads about 500 MB from the Hugging Face Hub)."
        ),
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--tiny",
        action="store_true",
        help="export a 2-layer random-weight RoBERTa (for tests, no download)",
    )
    kind.add_argument(
        "--random-base",
        action="store_true",
        help="export roberta-base's shape with random weights (for benchmarks)",
    )
    kind.add_argument(
        "--stand-in",
        action="store_true",
        help=(
            "export the trained-like stand-in: roberta-base's shape, random weights with "
            "RoBERTa's outlier LayerNorm features and a spread classifier (fidelity proxy)"
        ),
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="with --stand-in: two layers and a small tokenizer (for tests, seconds)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"bundle directory (default: DIR/model with --data-dir, else {default_model_dir()})",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="the agent's data folder: used only for the default --out (DIR/model, where the "
        "agent looks for its model)",
    )
    parser.add_argument("--model-id", default=None, help=f"Hub model id (default: {MODEL_ID})")
    parser.add_argument(
        "--revision", default=None, help="Hub branch, tag or commit to pin (default: the latest)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"tokens per message the scorer keeps (default {DEFAULT_MAX_LENGTH})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="CPU threads for the export and the parity check",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="weight seed of --tiny / --random-base (default 0)"
    )
    parser.add_argument(
        "--skip-parity",
        action="store_true",
        help="do not compare the int8 model with the PyTorch model",
    )
    parser.add_argument(
        "--keep-intermediate",
        action="store_true",
        help="keep the fp32/fused ONNX graphs (and a built source) beside --out",
    )
    parser.add_argument(
        "--via",
        choices=("light", "optimum"),
        default="light",
        help=(
            "fp32 exporter: light (default: the graph built from the weights with onnx and "
            "numpy, no PyTorch) or optimum (PyTorch + optimum, the reference exporter; needs "
            "`pip install captaflow[export-torch]`)"
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _run(args: argparse.Namespace) -> None:
    if (args.tiny or args.random_base or args.stand_in) and (args.model_id or args.revision):
        raise UsageError(
            "--model-id/--revision name a Hub model; --tiny, --random-base and --stand-in "
            "build their own: drop one of them"
        )
    if args.small and not args.stand_in:
        raise UsageError("--small goes with --stand-in only")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be at least 1")
    if args.out is not None:
        out: Path = args.out.expanduser()
    elif args.data_dir:
        from agent.paths import resolve_locations

        out = resolve_locations(data_dir=Path(args.data_dir).expanduser()).model_dir
    else:
        out = default_model_dir().expanduser()
    progress = StageClock()
    work_dir = intermediate_dir_for(out) if args.keep_intermediate else None
    common = {
        "max_length": args.max_length,
        "threads": args.threads,
        "skip_parity": args.skip_parity,
        "work_dir": work_dir,
        "progress": progress,
        "via": args.via,
    }
    if args.stand_in:
        _stand_in(args, out, work_dir, common)
        return
    if not (args.tiny or args.random_base):
        export_bundle(
            args.model_id or MODEL_ID,
            out,
            revision=args.revision,
            tolerance=REAL_MODEL_TOLERANCE,
            **common,
        )
        return
    build, model_id, label = (
        (build_tiny_source, TINY_MODEL_ID, TINY_LABEL)
        if args.tiny
        else (build_random_base_source, RANDOM_BASE_MODEL_ID, RANDOM_BASE_LABEL)
    )
    with tempfile.TemporaryDirectory(prefix="captaflow-source-") as scratch:
        source_dir = stand_in_source_dir(work_dir) if work_dir is not None else Path(scratch)
        progress(f"building {model_id} (random weights, seed {args.seed}) in {source_dir}")
        try:
            build(source_dir, args.seed, max_length=args.max_length)
        except OSError as exc:
            raise ExportError(
                f"cannot build the model in {source_dir} ({exc}): free some "
                f"space or pass another --out"
            ) from exc
        export_bundle(
            source_dir,
            out,
            source_model_id=model_id,
            source_revision=f"random-seed-{args.seed}",
            tolerance=RANDOM_MODEL_TOLERANCE,
            test_model=label,
            **common,
        )


def _stand_in(
    args: argparse.Namespace, out: Path, work_dir: Path | None, common: dict[str, Any]
) -> None:
    model_id, label = (
        (STAND_IN_SMALL_MODEL_ID, STAND_IN_SMALL_LABEL)
        if args.small
        else (STAND_IN_MODEL_ID, STAND_IN_LABEL)
    )
    progress = common["progress"]
    with tempfile.TemporaryDirectory(prefix="captaflow-source-") as scratch:
        source_dir = stand_in_source_dir(work_dir) if work_dir is not None else Path(scratch)
        progress(f"building {model_id} (seed {args.seed}) in {source_dir}")
        calibration = Path(scratch) / "calibration"
        try:
            build_stand_in_source(
                source_dir,
                args.seed,
                small=args.small,
                max_length=args.max_length,
                head_inputs=lambda d, texts: fp32_head_inputs(
                    d, texts, calibration, args.via, args.max_length
                ),
                calibration_texts=CALIBRATION_TEXTS,
            )
        except OSError as exc:
            raise ExportError(
                f"cannot build the model in {source_dir} ({exc}): free some "
                f"space or pass another --out"
            ) from exc
        shutil.rmtree(calibration, ignore_errors=True)
        export_bundle(
            source_dir,
            out,
            source_model_id=model_id,
            source_revision=f"stand-in-seed-{args.seed}",
            tolerance=STAND_IN_TOLERANCE,
            test_model=label,
            **common,
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None, *, prog: str = "python -m model_export") -> int:
    """`prog` is how the help names the command (`captaflow export-model` from the agent);
    errors then begin with "captaflow:" like every other captaflow command's."""
    parser = build_parser(prog)
    said = "captaflow:" if prog.split()[0] == "captaflow" else "error:"
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        _run(parser.parse_args(argv))
    except CaptaFlowError as exc:
        if debug:
            traceback.print_exc()
        print(f"{said} {_one_line(exc)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"{said} export interrupted; nothing new was published", file=sys.stderr)
        return 1
    except Exception as exc:  # the last guard: a user never sees a bare traceback
        if debug:
            traceback.print_exc()
        print(
            f"{said} the export failed unexpectedly ({type(exc).__name__}: {_one_line(exc)}): "
            f"run again with --debug and report it",
            file=sys.stderr,
        )
        return 1
    return 0
