"""The `captaflow` command line: one entry for the tray, the headless agent and the tools.

Exit status: 0 on success, 2 for bad usage or settings, 1 for other failures. Errors are one
line on stderr that says what to do; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import CaptaFlowError, UsageError

log = logging.getLogger("captaflow")

DEMO_FILE = "demo_chat.jsonl"


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Options every command that needs them accepts (flags override the config file).

    They are accepted before and after the command. A subcommand's own defaults are
    suppressed, or argparse would overwrite a value given before the command with None.
    """
    default = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", default=default, help="settings file (TOML)")
    g.add_argument(
        "--data-dir", metavar="DIR", default=default, help="where the spool, journal and model live"
    )
    g.add_argument("--model", metavar="DIR", default=default, help="model bundle directory")
    g.add_argument(
        "--bucket", metavar="NAME", default=default, help="S3 bucket to upload readings to"
    )
    g.add_argument(
        "--prefix", metavar="P", default=default, help="S3 key prefix (default: captaflow)"
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captaflow",
        description="How your live chat feels, moment by moment. Without a command: the tray app.",
    )
    parser.add_argument("--version", action="version", version=f"captaflow {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent headless with the console previews")
    _common(run)
    run.add_argument("--channel", help="the chat to read (e.g. a Twitch channel name)")
    run.add_argument("--source", choices=["twitch", "streamerbot", "ssn", "ws", "replay"])
    run.add_argument("--server-url", help="chat server URL (Twitch-compatible, Streamer.bot...)")
    run.add_argument("--file", help="recorded chat file for --source replay (JSONL or IRC log)")
    run.add_argument("--speed", help="replay speed: recorded, max, or a factor such as 10")
    run.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    run.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    demo = sub.add_parser("demo", help="replay a chat recording shipped with CaptaFlow")
    _common(demo)
    demo.add_argument("--speed", default="max", help="recorded, max (default) or a factor")
    demo.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    demo.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    score = sub.add_parser("score", help="score texts (arguments or stdin), one reading a line")
    _common(score)
    score.add_argument("texts", nargs="*", help="texts to score; none: read lines from stdin")
    score.add_argument("--json", action="store_true", help="JSON lines with all 11 labels")

    replay = sub.add_parser("replay", help="re-score a past session from the journal")
    _common(replay)
    replay.add_argument("--session", required=True, metavar="ID")
    replay.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    replay.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    sync = sub.add_parser("sync", help="upload what waits now, with progress")
    _common(sync)
    status = sub.add_parser("status", help="what is running, waiting, failing")
    _common(status)

    report = sub.add_parser("report", help="the local HTML report of a session")
    _common(report)
    which = report.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="ID")
    which.add_argument("--latest", action="store_true", help="the latest session (default)")
    which.add_argument("--date", metavar="YYYY-MM-DD", help="the latest session of that day")
    report.add_argument("--out", metavar="FILE", help="where to write the HTML")
    report.add_argument("--open", action="store_true", help="open it in the browser")

    ddl = sub.add_parser("athena-ddl", help="print the Athena table for the readings")
    _common(ddl)
    ddl.add_argument("--table", default="captaflow_readings")
    ddl.add_argument("--database", default=None)

    model = sub.add_parser(
        "model",
        help="get the model: download the published bundle (checked) when there is none",
        description="Download, verify (sha256, then the bundle's manifest) and install the model "
        "bundle named by [model] bundle_url / bundle_sha256; a cut download resumes.",
    )
    _common(model)
    model.add_argument("action", choices=["get"], help="get: download and install the bundle")
    model.add_argument("--url", help="bundle archive URL (default: [model] bundle_url)")
    model.add_argument("--sha256", help="its sha256 (default: [model] bundle_sha256)")
    model.add_argument("--force", action="store_true", help="download even if a model is there")

    sub.add_parser(
        "export-model",
        help="one-time export of the model to int8 ONNX (= python -m model_export)",
        add_help=False,
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that map onto settings keys (dotted), only where given."""
    mapping = {
        "data_dir": "data_dir",
        "model": "model.dir",
        "bucket": "sync.bucket",
        "prefix": "sync.prefix",
        "channel": "source.channel",
        "source": "source.kind",
        "server_url": "source.server_url",
        "file": "source.file",
        "speed": "source.speed",
    }
    out: dict[str, Any] = {}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    return out


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    from agent.config import load_settings

    overrides = _overrides(args)
    overrides.update(extra or {})
    return load_settings(Path(args.config) if args.config else None, overrides)


def _previews(settings: Any, quiet: bool, verbose: bool = False, fast: bool | None = None) -> Any:
    from agent.previews import console_previews

    return console_previews(settings, quiet=quiet, verbose=verbose, fast=fast)


def _require_model(settings: Any) -> None:
    from agent.bundle import model_present

    model_dir = Path(settings.model.dir)
    if not model_present(model_dir):
        raise CaptaFlowError(
            f"no model at {model_dir}: export it once with `captaflow export-model` "
            f"(downloads about 500 MB once, needs internet; takes a few minutes) "
            f"or pass --model DIR"
        )


# ---- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> int:
    _run_agent(args, extra)
    return 0


def _run_agent(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """Run the agent headless until its source ends or Ctrl-C; returns the settings used."""
    from agent.logs import setup_logging
    from agent.runtime import Agent
    from agent.single_instance import SingleInstance

    settings = _settings(args, extra)
    setup_logging(settings, console=True, debug=args.debug)
    _require_model(settings)
    with SingleInstance(Path(settings.data_dir)) as lock:
        if not lock.acquired:
            raise CaptaFlowError(
                f"CaptaFlow is already running (pid {lock.holder_pid}) on {settings.data_dir}: "
                f"stop it from the tray first, or use another --data-dir"
            )
        agent = Agent(settings, previews=_previews(settings, args.quiet, args.verbose))
        agent.run_forever()
        status = agent.status()
        print(
            f"stopped: session {agent.session_id}, {agent.stats.messages} messages "
            f"({agent.stats.duplicates} duplicates dropped, {agent.stats.not_scored} bots/commands "
            f"not scored), {len(agent.stats.readings)} readings; parts waiting for upload: "
            f"{status.parts_waiting}",
            file=sys.stderr,
        )
    return settings


def cmd_demo(args: argparse.Namespace) -> int:
    demo = resources.files("agent") / "data" / DEMO_FILE
    with resources.as_file(demo) as path:
        settings = _run_agent(
            args,
            {
                "source.kind": "replay",
                "source.file": str(path),
                "source.speed": args.speed,
                "source.channel": "",
            },
        )
    try:
        from agent.report import build_report

        out = build_report(
            Path(settings.spool.dir),
            latest=True,
            displayed=tuple(settings.display.emotions),
            out=Path(settings.reports_dir) / "demo.html",
            samples=_journal_samples(settings),
        )
        print(f"report: {out}", file=sys.stderr)
    except CaptaFlowError as exc:
        print(f"captaflow: report skipped: {exc}", file=sys.stderr)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from agent.assembly import open_scorer
    from agent.previews import format_message_line
    from agent.vocab import LABELS, dominant_label

    settings = _settings(args)
    _require_model(settings)
    scorer = open_scorer(settings)
    texts: Sequence[str] = args.texts
    if not texts:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("give texts to score as arguments, or pipe lines into stdin")
        texts = [line.rstrip("\r\n") for line in sys.stdin]
    displayed = tuple(settings.display.emotions)
    batch = 256
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        scores = scorer.score(chunk)
        for text, row in zip(chunk, scores, strict=True):
            values = tuple(float(x) for x in row)
            if args.json:
                print(
                    json.dumps(
                        {
                            "text": text,
                            "scores": {
                                label: round(v, 6) for label, v in zip(LABELS, values, strict=True)
                            },
                            "dominant": dominant_label(values, displayed),
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                print(
                    f"{format_message_line(text, values, displayed)}  "
                    f"→ {dominant_label(values, displayed)}"
                )
    return 0


def _journal_samples(settings: Any) -> Any:
    from agent.journal import sample_source

    return sample_source(Path(settings.journal_path))


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging
    from agent.rescore import rescore_session

    settings = _settings(args)
    setup_logging(settings, console=True, debug=args.debug)
    _require_model(settings)
    previews = _previews(settings, args.quiet, args.verbose, fast=True)
    result = rescore_session(settings, args.session, previews=previews)
    print(
        f"re-scored session {args.session} as {result.session_id}: {result.messages} messages, "
        f"{result.readings} readings in {result.parts} part(s)",
        file=sys.stderr,
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from agent.sync import S3ObjectStore, Uploader

    settings = _settings(args)
    s = settings.sync
    if not s.bucket:
        raise UsageError("no bucket set: pass --bucket NAME or set sync.bucket in the config file")
    store = S3ObjectStore(s.bucket, region=s.region or None)
    uploader = Uploader(Path(settings.spool.dir), store, s.prefix)

    def progress(done: int, total: int) -> None:
        print(f"\ruploading {done}/{total} parts", end="", file=sys.stderr, flush=True)

    report = uploader.sync_once(progress=progress)
    print(file=sys.stderr)
    print(
        f"uploaded {len(report.uploaded)} part(s) to s3://{s.bucket}/{s.prefix}/; "
        f"{report.waiting} still waiting",
        file=sys.stderr,
    )
    if report.failed:
        raise CaptaFlowError(report.failed)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.assembly import STATUS_FILE
    from agent.single_instance import SingleInstance

    settings = _settings(args)
    data_dir = Path(settings.data_dir)
    with SingleInstance(data_dir) as lock:
        running = not lock.acquired
        holder = lock.holder_pid
    spool = Path(settings.spool.dir)
    waiting = sorted((spool / "sealed").rglob("*.csv")) if (spool / "sealed").is_dir() else []
    uploaded = list((spool / "uploaded").rglob("*.csv")) if (spool / "uploaded").is_dir() else []
    corrupt = list((spool / "corrupt").rglob("*")) if (spool / "corrupt").is_dir() else []
    print(f"agent: {'running (pid ' + str(holder) + ')' if running else 'not running'}")
    snapshot_path = data_dir / STATUS_FILE
    if snapshot_path.is_file():
        try:
            snap = json.loads(snapshot_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            snap = {}
        if snap:
            age = time.time() - float(snap.get("written_at", 0))
            source = snap.get("source") or {}
            link = f"{source.get('state')} {source.get('detail', '')}".rstrip()
            print(f"last status ({age:.0f} s ago): {snap.get('state')}, source {link}")
            print(
                f"session: {snap.get('session_id')} on {snap.get('channel')}; "
                f"{snap.get('messages_total')} messages, {snap.get('readings_total')} readings, "
                f"dominant: {snap.get('dominant')}"
            )
            if snap.get("upload_state"):
                print(f"upload: {snap.get('upload_state')}")
            if snap.get("problem"):
                print(f"problem: {snap.get('problem')}")
    print(
        f"spool: {len(waiting)} part(s) waiting for upload, {len(uploaded)} uploaded, "
        f"{len(corrupt)} set aside in {spool / 'corrupt'}"
        if corrupt
        else f"spool: {len(waiting)} part(s) waiting for upload, {len(uploaded)} uploaded"
    )
    bucket = settings.sync.bucket
    print(
        f"sync: {'to s3://' + bucket + '/' + settings.sync.prefix if bucket else 'off (no bucket)'}"
    )
    print(f"model: {settings.model.dir}")
    print(f"data: {data_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.report import build_report

    settings = _settings(args)
    out = (
        Path(args.out)
        if args.out
        else Path(settings.reports_dir) / (f"{args.session or 'latest'}.html")
    )
    path = build_report(
        Path(settings.spool.dir),
        session_id=args.session,
        latest=not args.session and not args.date,
        date=args.date,
        displayed=tuple(settings.display.emotions),
        samples=_journal_samples(settings),
        out=out,
    )
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def cmd_athena_ddl(args: argparse.Namespace) -> int:
    from agent.athena import athena_ddl

    settings = _settings(args)
    bucket = settings.sync.bucket or "YOUR-BUCKET"
    print(athena_ddl(bucket, settings.sync.prefix, table=args.table, database=args.database))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from agent.model_download import model_get

    return model_get(_settings(args), url=args.url, sha256=args.sha256, force=args.force)


def cmd_tray(args: argparse.Namespace) -> int:
    from agent.tray import run_tray

    return run_tray(_settings(args), debug=args.debug)


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "score": cmd_score,
    "replay": cmd_replay,
    "sync": cmd_sync,
    "status": cmd_status,
    "report": cmd_report,
    "athena-ddl": cmd_athena_ddl,
    "model": cmd_model,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export-model":
        # The export has its own options; hand them over untouched.
        try:
            from model_export.cli import main as export_main
        except ImportError:
            print(
                "captaflow: the export needs the export extras: run "
                "`pip install 'captaflow[export]'` in a Python install (the executable does not "
                "bundle PyTorch), then `captaflow export-model`",
                file=sys.stderr,
            )
            return 1
        return export_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        handler = COMMANDS.get(args.command or "", cmd_tray)
        return handler(args)
    except CaptaFlowError as exc:
        if debug:
            raise
        print(f"captaflow: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("captaflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if debug:
            raise
        log.exception("unexpected error")
        print(
            f"captaflow: unexpected {type(exc).__name__}: {exc} (run again with --debug for "
            f"details and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
