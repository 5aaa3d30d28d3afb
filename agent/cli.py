"""The `captaflow` command line: one entry for the tray, the headless agent and the tools.

Exit status: 0 on success, 2 for bad usage or settings, 1 for other failures, 141 (quietly)
when the reader of stdout went away (`captaflow config --show | head -3`). Errors are one
line on stderr that says what to do; `--debug` shows the traceback. An unexpected error is
written to the log file with its traceback, and the one line says where that file is.

Every command that reads settings creates the commented settings file on its first run and
says where, once; `captaflow config` prints that path again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent import __version__
from agent.errors import CaptaFlowError, UsageError

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger("captaflow")

DEMO_FILE = "demo_chat.jsonl"
PROG = "captaflow"


class _Parser(argparse.ArgumentParser):
    """argparse, with bad usage reported as one line (exit status 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---- the parser ---------------------------------------------------------------------------


def _source_kinds() -> tuple[str, ...]:
    from agent.sources import SOURCE_KINDS

    return SOURCE_KINDS


def _source_help() -> str:
    """One clause per source, from its descriptor: a new source shows up here by itself."""
    from agent.sources import DESCRIPTORS

    return "where chat comes from: " + "; ".join(f"{d.kind} = {d.title}" for d in DESCRIPTORS)


def _secret_names_help() -> str:
    from agent.secrets import known_secrets

    return "one of " + ", ".join(spec.keyring for spec in known_secrets())


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Options every command accepts (flags override the settings file).

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
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default,
        help="how much goes into the log file (log.level)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )


def _source_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Which chat to read: for the tray (bare `captaflow`) and `run`."""
    default = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("chat source")
    g.add_argument(
        "--channel", default=default, help="the chat to read (e.g. a Twitch channel name)"
    )
    g.add_argument("--source", choices=_source_kinds(), default=default, help=_source_help())
    g.add_argument(
        "--server-url",
        metavar="URL",
        default=default,
        help="the chat server's address (empty: the source's usual one)",
    )


def _ui_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The local web UI's port: for every command that runs the agent (the tray, `run`,
    `demo`)."""
    parser.add_argument(
        "--ui-port",
        metavar="N",
        default=None if top else argparse.SUPPRESS,
        help="the dashboard / OBS overlay port on 127.0.0.1 (ui.port; 0 = off)",
    )


def _command(
    sub: Any, name: str, summary: str, description: str = "", **kwargs: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description or summary[:1].upper() + summary[1:] + ".",
        **kwargs,
    )  # fmt: skip
    _common(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="How your live chat feels, moment by moment. Without a command: the tray app.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, top=True)
    _source_options(parser, top=True)
    _ui_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = _command(
        sub,
        "run",
        "run the agent headless with the console previews",
        "Run the agent without the tray: read chat, score it, print the previews, keep the "
        "readings on disk and upload them. Ctrl-C stops cleanly (the open part is sealed).",
    )
    _source_options(run)
    _ui_options(run)
    run.add_argument("--file", help="recorded chat file for --source replay (JSONL or IRC log)")
    run.add_argument("--speed", help="replay speed: recorded, max, or a factor such as 10")
    run.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    run.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    demo = _command(
        sub,
        "demo",
        "replay a chat recording shipped with CaptaFlow",
        "Replay the chat recording shipped with CaptaFlow through the whole flow (journal, "
        "windows, scorer, spool) and write its HTML report.",
    )
    _ui_options(demo)
    demo.add_argument("--speed", default="max", help="recorded, max (default) or a factor")
    demo.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    demo.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    score = _command(
        sub,
        "score",
        "score texts (arguments or stdin), one reading a line",
        "Score each text given as an argument, or each line of stdin, and print one line per "
        "text: the displayed emotions and the dominant one (--json: all 11 labels).",
    )
    score.add_argument("texts", nargs="*", help="texts to score; none: read lines from stdin")
    score.add_argument("--json", action="store_true", help="JSON lines with all 11 labels")

    replay = _command(
        sub,
        "replay",
        "re-score a past session from the journal",
        "Re-score a past session's messages from the journal (for example with a new model) "
        "into a new session of readings.",
    )
    replay.add_argument("--session", required=True, metavar="ID", help="the session to re-score")
    replay.add_argument("--quiet", action="store_true", help="no per-message preview lines")
    replay.add_argument(
        "--verbose", action="store_true", help="every preview line, even at full replay speed"
    )

    _command(
        sub,
        "sync",
        "upload what waits now, with progress",
        "Upload every sealed part waiting on disk to S3 now, oldest first, once. The running "
        "agent uploads by itself; this is for a one-off catch-up.",
    )
    _command(
        sub,
        "status",
        "what is running, waiting, failing",
        "Say whether the agent runs, what its last session did, what waits for upload, where "
        "readings go and which model is used.",
    )

    report = _command(
        sub,
        "report",
        "the local HTML report of a session",
        "Write the HTML report of a session (the latest by default) and print its path.",
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="ID", help="the session to report on")
    which.add_argument("--latest", action="store_true", help="the latest session (default)")
    which.add_argument("--date", metavar="YYYY-MM-DD", help="the latest session of that day")
    report.add_argument("--out", metavar="FILE", help="where to write the HTML")
    report.add_argument("--open", action="store_true", help="open it in the browser")

    markers = _command(
        sub,
        "markers",
        "a session's moments as a marker list for video editors",
        "Write a session's moments (the latest session by default) as a CSV (VOD time, "
        "emotion, strength, sample messages), a CMX3600 EDL with markers (DaVinci Resolve: "
        "Timelines > Import > Timeline Markers from EDL; Premiere Pro: File > Import) or a "
        "YouTube chapter list for the video's description.",
    )
    markers.add_argument("--session", metavar="ID", help="the session (default: the latest)")
    markers.add_argument("--format", choices=("csv", "edl", "chapters"), default="csv")
    markers.add_argument("--out", metavar="FILE", help="write to FILE instead of printing")
    markers.add_argument("--fps", type=int, default=30, help="EDL frame rate (24/25/30/50/60)")
    markers.add_argument(
        "--timeline-start",
        default="01:00:00:00",
        metavar="TC",
        help="EDL timecode of the VOD's first frame (Resolve 01:00:00:00, Premiere 00:00:00:00)",
    )

    login = _command(
        sub,
        "login",
        "log in to Twitch (stream markers for live moments)",
        "Log in with Twitch's device code flow: open the address shown, enter the code, "
        'approve. The token goes into the OS keyring (entry "twitch_token"). Needs '
        "twitch.client_id in the settings.",
    )
    login.add_argument("platform", choices=["twitch"], help="twitch")

    ddl = _command(
        sub,
        "athena-ddl",
        "print the Athena table for the readings",
        "Print the CREATE EXTERNAL TABLE statement that lets Athena query the readings "
        "uploaded to s3://BUCKET/PREFIX/.",
    )
    ddl.add_argument("--table", default="captaflow_readings", help="the table's name")
    ddl.add_argument("--database", default=None, help="the Glue database to create it in")

    config = _command(
        sub,
        "config",
        "print where the settings file is, or the effective settings",
        "Print the settings file's path (creating it with commented defaults on first run). "
        "--show prints every effective setting and where it came from: default, file or flag.",
    )
    config.add_argument(
        "--show", action="store_true", help="print the effective settings and their origin"
    )
    config.add_argument(
        "--create",
        action="store_true",
        help="with --config FILE: write a fresh commented FILE when it does not exist",
    )

    secrets = _command(
        sub,
        "secrets",
        "store a token or password in the OS keyring, or list which are set",
        "Secrets never go in the settings file. `secrets set NAME` asks for one (without "
        "echo) and stores it in the OS keyring; `secrets list` says which are set and where "
        "(environment or keyring), never their values.",
    )
    secret_sub = secrets.add_subparsers(
        dest="secrets_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    secret_set = secret_sub.add_parser(
        "set",
        help="store one secret in the OS keyring",
        description="Ask for a secret without echoing it and store it in the OS keyring "
        '(service "CaptaFlow").',
    )
    _common(secret_set)
    secret_set.add_argument("name", help=_secret_names_help())
    secret_list = secret_sub.add_parser(
        "list",
        help="which secrets are set, and where",
        description="Which secrets are set, and where (environment or keyring); never values.",
    )
    _common(secret_list)

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
        description="One-time export of the emotion model to CaptaFlow's int8 ONNX bundle.",
        add_help=False,
    )
    return parser


# ---- settings -----------------------------------------------------------------------------

_FLAG_KEYS = {
    "data_dir": "data_dir",
    "model": "model.dir",
    "bucket": "sync.bucket",
    "prefix": "sync.prefix",
    "log_level": "log.level",
    "channel": "source.channel",
    "source": "source.kind",
    "server_url": "source.server_url",
    "file": "source.file",
    "speed": "source.speed",
    "ui_port": "ui.port",
}


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that map onto settings keys (dotted), only where given."""
    out: dict[str, Any] = {}
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    return out


class Invocation:
    """One run of the command: its arguments, settings (read once) and log file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.debug = bool(getattr(args, "debug", False))
        self.log_file: Path | None = None
        self._settings: Settings | None = None

    @property
    def config_flag(self) -> Path | None:
        raw = getattr(self.args, "config", None)
        return Path(raw) if raw else None

    def settings(self, extra: dict[str, Any] | None = None) -> Settings:
        """The settings (flags over the file over the defaults); the first call also writes the
        commented settings file when there is none yet, and says where."""
        from agent.config import load_settings
        from agent.paths import location_problem, resolve_locations

        if self._settings is not None and not extra:
            return self._settings
        overrides = flag_overrides(self.args)
        overrides.update(extra or {})
        locations = resolve_locations(data_dir=overrides.get("data_dir"), config=self.config_flag)
        problem = location_problem(locations)
        if problem:
            raise UsageError(problem)
        config_file = locations.config_file
        if not config_file.exists():
            if self.config_flag is not None:
                # A named file that is not there is a typo far more often than a wish: using
                # the defaults silently would run with settings nobody chose.
                raise UsageError(
                    f"the settings file {config_file} (--config) does not exist: check the "
                    f"path, or create it with `captaflow config --create --config {config_file}`"
                )
            _first_run_file(config_file)
        settings = load_settings(self.config_flag, overrides)
        if not extra:
            self._settings = settings
        return settings

    def start_logging(self, settings: Settings, *, console: bool = False) -> None:
        from agent.logs import setup_logging

        self.log_file = setup_logging(settings, console=console, debug=self.debug)

    def log_unexpected(self) -> Path | None:
        """Write the current exception's traceback to the log file (only there: the console
        gets one line); the file's path, or None when there is no log file."""
        try:
            from agent.logs import setup_logging
            from agent.paths import resolve_locations

            target: Any = self._settings
            if target is None:
                data_dir = getattr(self.args, "data_dir", None)
                target = resolve_locations(data_dir=data_dir, config=self.config_flag).log_dir
            self.log_file = setup_logging(target, debug=self.debug)
        except Exception:  # logging trouble must not hide the error itself
            return None
        log.exception("unexpected error")
        return self.log_file


def _first_run_file(config_file: Path) -> None:
    from agent.config import write_default_config
    from agent.errors import SettingsError

    try:
        write_default_config(config_file)
    except SettingsError as error:
        # No settings file is no reason not to run: the defaults hold, and the next run tries
        # again.
        print(f"captaflow: {error} (going on with the defaults)", file=sys.stderr)
        return
    print(
        f"captaflow: created the settings file {config_file} (commented defaults: edit it to "
        f"change them)",
        file=sys.stderr,
    )


def _previews(
    settings: Settings, quiet: bool, verbose: bool = False, fast: bool | None = None
) -> Any:
    from agent.previews import console_previews

    return console_previews(settings, quiet=quiet, verbose=verbose, fast=fast)


def _require_model(settings: Settings) -> None:
    from agent.bundle import model_present
    from agent.status_text import missing_model

    model_dir = Path(settings.model.dir)
    if not model_present(model_dir):
        origin = dict((key, origin) for key, _, origin in settings.explained).get("model.dir")
        named = missing_model(model_dir, origin or "default")
        if named is not None:
            raise CaptaFlowError(named)
        raise CaptaFlowError(
            f"no model at {model_dir}: download the published one with `captaflow model get`, "
            f"or export it once with `captaflow export-model` (needs internet once), or pass "
            f"--model DIR"
        )


def _require_setup(settings: Settings) -> None:
    from agent.config import setup_problem

    problem = setup_problem(settings)
    if problem:
        raise UsageError(problem)


# ---- commands -------------------------------------------------------------------------------


def cmd_run(inv: Invocation) -> int:
    _run_agent(inv)
    return 0


def _run_agent(
    inv: Invocation, extra: dict[str, Any] | None = None, *, own_session: bool = False
) -> Settings:
    """Run the agent headless until its source ends or Ctrl-C; returns the settings used.

    `own_session`: a session of its own with its own dedup scope (the demo, every time)."""
    from agent.runtime import Agent
    from agent.single_instance import SingleInstance, agent_folders

    settings = inv.settings(extra)
    inv.start_logging(settings, console=True)
    _require_setup(settings)
    _require_model(settings)
    # Every folder the agent writes (data, spool, journal): one owner each.
    with SingleInstance(*agent_folders(settings)) as lock:
        if not lock.acquired and lock.taken != Path(settings.data_dir):
            raise CaptaFlowError(lock.message)
        if not lock.acquired:
            raise CaptaFlowError(
                f"CaptaFlow is already running (pid {lock.holder_pid}) on {settings.data_dir}: "
                f"stop it from the tray first, or use another --data-dir"
            )
        agent = Agent(
            settings,
            previews=_previews(settings, inv.args.quiet, inv.args.verbose),
            own_session=own_session,
        )
        agent.run_forever()
        for line in stopped_lines(
            agent.session_id,
            messages=agent.stats.messages,
            duplicates=agent.stats.duplicates,
            not_scored=agent.stats.not_scored,
            readings=len(agent.stats.readings),
            parts_waiting=agent.status().parts_waiting,
        ):
            print(line, file=sys.stderr)
        if (note := agent.duplicates_note()) is not None:
            print(note, file=sys.stderr)
    return settings


def stopped_lines(
    session_id: str | None,
    *,
    messages: int,
    duplicates: int,
    not_scored: int,
    readings: int,
    parts_waiting: int,
) -> list[str]:
    """What `run` / `demo` say when the agent has stopped: short lines (a narrow terminal must
    not wrap them), and never "None" for a session that never began."""
    waiting = f"{parts_waiting} part(s) waiting for upload"
    if not session_id:
        lines = ["stopped: no chat arrived, nothing recorded"]
        return [*lines, f"  {waiting}"] if parts_waiting else lines
    return [
        f"stopped: session {session_id}",
        f"  {messages} messages ({duplicates} duplicates dropped, {not_scored} bots/commands "
        f"not scored)",
        f"  {readings} readings; {waiting}",
    ]


def cmd_demo(inv: Invocation) -> int:
    demo = resources.files("agent") / "data" / DEMO_FILE
    with resources.as_file(demo) as path:
        settings = _run_agent(
            inv,
            {
                "source.kind": "replay",
                "source.file": str(path),
                "source.speed": inv.args.speed,
                "source.channel": "",
            },
            own_session=True,
        )
    try:
        from agent.report import build_report

        out = build_report(
            Path(settings.spool.dir),
            latest=True,
            displayed=tuple(settings.display.emotions),
            out=Path(settings.reports_dir) / "demo.html",
            samples=_journal_samples(settings),
            model_labels=_model_labels(settings),
        )
        print(f"report: {out}", file=sys.stderr)
    except CaptaFlowError as exc:
        print(f"captaflow: report skipped: {exc}", file=sys.stderr)
    return 0


def cmd_score(inv: Invocation) -> int:
    from agent.assembly import open_scorer
    from agent.previews import format_message_line, terminal_width
    from agent.vocab import LABELS, dominant_label

    settings = inv.settings()
    _require_model(settings)
    scorer = open_scorer(settings)
    test_model = getattr(getattr(scorer, "bundle", None), "test_model", None)
    if test_model:
        print(
            f"⚠ TEST MODEL ({test_model}): these emotions are random, not the text's",
            file=sys.stderr,
        )
    texts: Sequence[str] = inv.args.texts
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
            if inv.args.json:
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
                top = dominant_label(values, displayed)
                # The line and its "  → dominant" together fit the terminal (app's previews).
                width = terminal_width() - max(len(label) for label in displayed) - 3
                print(f"{format_message_line(text, values, displayed, width, pad=True)} → {top}")
    return 0


def _model_labels(settings: Settings) -> dict[str, str | None]:
    """The model's test label for the report's banner (app's agent.model_download)."""
    from agent.model_download import model_labels

    return model_labels(settings.model.dir)


def _journal_samples(settings: Settings) -> Any:
    from agent.journal import sample_source

    return sample_source(Path(settings.journal_path))


def cmd_replay(inv: Invocation) -> int:
    from agent.rescore import rescore_session

    settings = inv.settings()
    inv.start_logging(settings, console=True)
    _require_model(settings)
    args = inv.args
    previews = _previews(settings, args.quiet, args.verbose, fast=True)
    result = rescore_session(settings, args.session, previews=previews)
    print(
        f"re-scored session {args.session} as {result.session_id}: {result.messages} messages, "
        f"{result.readings} readings in {result.parts} part(s)",
        file=sys.stderr,
    )
    return 0


def one_shot_failure(failed: str, waiting: int, *, fatal: bool) -> str:
    """The line a one-shot `captaflow sync` ends with when a part could not be uploaded: the
    uploader's promise to retry (written for the agent) replaced by what the user can do."""
    from agent.sync import without_retry_promise

    reason = without_retry_promise(failed)
    kept = f"{waiting} part(s) stay on disk, nothing is lost"
    if fatal:
        return f"upload stopped: {reason}; {kept}: fix that, then run `captaflow sync` again"
    return (
        f"upload stopped: {reason}; {kept}: run `captaflow sync` again once S3 is reachable "
        f"(a running agent retries by itself)"
    )


def cmd_sync(inv: Invocation) -> int:
    from agent.s3store import S3ObjectStore
    from agent.sync import Uploader

    settings = inv.settings()
    # File only: the uploader's own warnings must not interleave with the progress lines.
    inv.start_logging(settings)
    s = settings.sync
    if not s.bucket:
        raise UsageError("no bucket set: pass --bucket NAME or set sync.bucket in the config file")
    store = S3ObjectStore(s.bucket, region=s.region or None)
    uploader = Uploader(Path(settings.spool.dir), store, s.prefix, one_shot=True)
    target = f"s3://{s.bucket}/{s.prefix}/" if s.prefix else f"s3://{s.bucket}/"

    def progress(done: int, total: int) -> None:
        if total == 0:
            print(f"nothing waits for upload to {target}", file=sys.stderr)
        elif done == 0:
            print(f"uploading {total} part(s) to {target}", file=sys.stderr)
        else:
            print(f"uploaded {done}/{total}", file=sys.stderr)

    report = uploader.sync_once(progress=progress)
    for line in report.set_aside:  # parts that failed their checksum: never uploaded
        print(f"captaflow: {line}", file=sys.stderr)
    if report.failed:
        raise CaptaFlowError(one_shot_failure(report.failed, report.waiting, fatal=report.fatal))
    if report.uploaded:
        print(
            f"uploaded {len(report.uploaded)} part(s) to {target}; {report.waiting} still waiting",
            file=sys.stderr,
        )
    return 0


def cmd_status(inv: Invocation) -> int:
    from agent.status_text import gather_status, status_lines

    for line in status_lines(gather_status(inv.settings())):
        print(line)
    return 0


def cmd_report(inv: Invocation) -> int:
    from agent.report import build_report

    settings = inv.settings()
    args = inv.args
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
        model_labels=_model_labels(settings),
    )
    print(path)
    if args.open and not _open_in_browser(path):
        print(
            f"captaflow: no browser could be opened here; open {path.resolve()} yourself",
            file=sys.stderr,
        )
    return 0


def _open_in_browser(path: Path) -> bool:
    import webbrowser

    try:
        return bool(webbrowser.open(path.resolve().as_uri()))
    except webbrowser.Error:
        return False


def cmd_athena_ddl(inv: Invocation) -> int:
    from agent.athena import PLACEHOLDER_BUCKET, athena_ddl

    settings = inv.settings()
    bucket = settings.sync.bucket
    if not bucket:
        # A valid placeholder name, so the statement is complete; the note says to change it.
        bucket = PLACEHOLDER_BUCKET
        print(
            f"captaflow: no bucket set: the table points at s3://{bucket}/; pass --bucket NAME "
            f"(or set sync.bucket) for the real one",
            file=sys.stderr,
        )
    args = inv.args
    print(athena_ddl(bucket, settings.sync.prefix, table=args.table, database=args.database))
    return 0


def cmd_model(inv: Invocation) -> int:
    from agent.model_download import model_get

    args = inv.args
    return model_get(inv.settings(), url=args.url, sha256=args.sha256, force=args.force)


def cmd_config(inv: Invocation) -> int:
    from agent.config import describe_settings, write_default_config

    flag = inv.config_flag
    if inv.args.create:
        if flag is None:
            raise UsageError("--create needs --config FILE: the file to write")
        if not flag.exists():
            write_default_config(flag.absolute())
            print(f"captaflow: created the settings file {flag.absolute()}", file=sys.stderr)
    settings = inv.settings()
    if inv.args.show:
        print("\n".join(describe_settings(settings)))
    else:
        print(settings.config_path)
    return 0


def secret_lines(states: Sequence[Any]) -> list[str]:
    """`captaflow secrets list`: each secret's name and where it is set; never a value."""
    lines = []
    for state in states:
        if state.where == "environment":
            where = f"set in the environment ({state.env})"
        elif state.where == "keyring":
            where = 'set in the OS keyring (service "CaptaFlow")'
        else:
            where = f"not set (`captaflow secrets set {state.name}`, or set {state.env})"
        lines.append(f"{state.name}: {where}")
    return lines


def cmd_secrets(inv: Invocation) -> int:
    from agent.secrets import find_secret, list_secrets, store_secret

    inv.settings()  # the first run writes the settings file here too
    if inv.args.secrets_command == "list":
        for line in secret_lines(list_secrets()):
            print(line)
        return 0
    spec = find_secret(inv.args.name)  # an unknown name fails before anything is asked
    if sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"{spec.keyring} ({spec.doc}; typing is not shown): ")
    else:
        # Piped in (a password manager, a script): one line, never echoed anywhere.
        value = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
    store_secret(spec.keyring, value)
    print(
        f'captaflow: stored {spec.keyring} in the OS keyring (service "CaptaFlow"); '
        f"{spec.env}, when set, still wins",
        file=sys.stderr,
    )
    return 0


def cmd_markers(inv: Invocation) -> int:
    from agent.markers import session_markers

    settings = inv.settings()
    args = inv.args
    text = session_markers(
        Path(settings.spool.dir),
        session_id=args.session,
        fmt=args.format,
        displayed=tuple(settings.display.emotions),
        samples=_journal_samples(settings) if args.format == "csv" else None,
        fps=args.fps,
        timeline_start=args.timeline_start,
    )
    if args.out:
        out = Path(args.out)
        out.write_text(text, encoding="utf-8", newline="")
        print(out)
    else:
        # Bytes as they are: an EDL's CR LF must not become CR CR LF on Windows.
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    return 0


def cmd_login(inv: Invocation) -> int:
    from agent.twitch_api import login_twitch

    login_twitch(inv.settings(), say=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def cmd_tray(inv: Invocation) -> int:
    from agent.tray import run_tray

    # The overrides go along: each Start re-reads the settings file, and the flags given on
    # this command line must still win then.
    overrides = flag_overrides(inv.args)
    overrides.pop("data_dir", None)
    return run_tray(inv.settings(), debug=inv.debug, overrides=overrides)


COMMANDS: dict[str, Callable[[Invocation], int]] = {
    "run": cmd_run,
    "demo": cmd_demo,
    "score": cmd_score,
    "replay": cmd_replay,
    "sync": cmd_sync,
    "status": cmd_status,
    "report": cmd_report,
    "athena-ddl": cmd_athena_ddl,
    "model": cmd_model,
    "config": cmd_config,
    "secrets": cmd_secrets,
    "markers": cmd_markers,
    "login": cmd_login,
}


def _export_model(argv: list[str]) -> int:
    """The export has its own options; hand them over untouched."""
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
    return export_main(argv, prog=f"{PROG} export-model")


# What a shell reports for a command whose output pipe was closed (128 + SIGPIPE).
STDOUT_CLOSED_STATUS = 141


def _stdout_closed() -> int:
    """The reader of stdout went away (`captaflow config --show | head -3`): end quietly.

    As Python's signal docs advise, stdout is pointed at devnull so the interpreter's final
    flush cannot fail again with "Exception ignored ... BrokenPipeError"."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):  # no real file descriptor behind stdout
        pass
    return STDOUT_CLOSED_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        if sys.stdout is not None:
            sys.stdout.flush()  # output still buffered meets a closed pipe here
        return status
    except BrokenPipeError:
        return _stdout_closed()


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export-model":
        return _export_model(argv[1:])
    debug = "--debug" in argv
    inv: Invocation | None = None
    try:
        args = build_parser().parse_args(argv)
        inv = Invocation(args)
        handler = COMMANDS.get(args.command or "", cmd_tray)
        return handler(inv)
    except BrokenPipeError:
        raise  # not a failure: whoever read stdout has stopped reading (see `main`)
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
        log_file = inv.log_unexpected() if inv is not None else None
        where = f"the details are in {log_file}" if log_file else "run again with --debug"
        print(
            f"captaflow: unexpected {type(exc).__name__}: {_first_line(exc)} ({where}; please "
            f"report it)",
            file=sys.stderr,
        )
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
