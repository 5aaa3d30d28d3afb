"""What `captaflow status` says: facts gathered from disk, then lines made by a pure function.

Truthful first: "running" only while another process holds the data folder's lock (the
snapshot file alone proves nothing: a killed agent leaves its last one behind); a stopped
agent's snapshot is told as its last session, never as a live state. Each fact is said once
(upload and sync are one line), and a value that is not known is left out, never "None".
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.layout import CORRUPT_DIR
from agent.vocab import StatusRecord

if TYPE_CHECKING:
    from agent.config import Settings


@dataclass(frozen=True, slots=True)
class ModelFacts:
    directory: Path
    present: bool
    model_id: str = ""
    test_model: str = ""  # the manifest's `test_model` label; "" for the real export
    parity: Mapping[str, Any] = field(default_factory=dict)
    problem: str = ""  # the bundle is there but its manifest cannot be read
    origin: str = "default"  # where model.dir came from: "default", "file" or "flag"


def missing_model(directory: Path, origin: str) -> str | None:
    """What to say of a model folder named on purpose (--model DIR, or model.dir in the
    file) that holds no bundle: to be filled there, not "pass --model DIR". None for the
    default folder, whose advice is the general one."""
    if origin == "default" or origin.startswith("default "):
        return None
    what = "does not exist" if not directory.exists() else "holds no model bundle"
    get = f"captaflow model get --model {directory}" if origin == "flag" else "captaflow model get"
    return (
        f"the model folder {directory} {what}: export one there (`captaflow export-model "
        f"--out {directory}`) or run `{get}`"
    )


@dataclass(frozen=True, slots=True)
class StatusFacts:
    running_pid: int | None  # the lock holder; None = not running (0: running, pid unknown)
    record: StatusRecord | None  # the status file (None when absent or unreadable)
    record_age: float | None  # seconds since it was written
    parts_waiting: int
    parts_uploaded: int
    parts_set_aside: int
    parts_open: int  # open parts while nothing runs: the last run did not stop cleanly
    spool_dir: Path
    sync_enabled: bool
    bucket: str
    prefix: str
    model: ModelFacts
    data_dir: Path


def model_facts(model_dir: Path, origin: str = "default") -> ModelFacts:
    from agent.bundle import MANIFEST_FILE, Manifest, model_present

    if not model_present(model_dir):
        return ModelFacts(model_dir, present=False, origin=origin)
    try:
        data = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest = Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return ModelFacts(model_dir, present=True, problem=f"{type(error).__name__}: {error}")
    return ModelFacts(
        model_dir,
        present=True,
        model_id=manifest.source_model_id,
        test_model=manifest.test_model or "",
        parity=dict(manifest.parity),
    )


def gather_status(settings: Settings) -> StatusFacts:
    """Everything `status_lines` needs, read from the data folder without changing it."""
    from agent.layout import count_parts
    from agent.single_instance import SingleInstance

    data_dir = Path(settings.data_dir)
    running_pid: int | None = None
    if data_dir.is_dir():
        with SingleInstance(data_dir) as lock:
            if not lock.acquired:
                running_pid = lock.holder_pid or 0
    record: StatusRecord | None = None
    age: float | None = None
    try:
        loaded = json.loads(settings.paths.status_file.read_text(encoding="utf-8"))
        record = StatusRecord.from_json(loaded) if isinstance(loaded, dict) else None
    except (OSError, ValueError, TypeError):
        record = None
    if record is not None and record.written_at > 0:
        age = max(0.0, time.time() - record.written_at)
    spool = Path(settings.spool.dir)
    counts = count_parts(spool)  # the spool's layout is agent.layout's to know
    # While an agent runs, its own bundle is the one to name (it may have been given --model),
    # not the settings' default folder.
    model_dir = Path(settings.model.dir)
    model_origin = dict((key, origin) for key, _, origin in settings.explained).get(
        "model.dir", "default"
    )
    if (
        record is not None
        and running_pid is not None
        and record.pid in (running_pid, 0)
        and record.model_dir
    ):
        model_dir = Path(record.model_dir)
        model_origin = "default"
    return StatusFacts(
        running_pid=running_pid,
        record=record,
        record_age=age,
        parts_waiting=counts.waiting,
        parts_uploaded=counts.uploaded,
        parts_set_aside=counts.corrupt,
        parts_open=counts.open,
        spool_dir=spool,
        sync_enabled=settings.sync.enabled,
        bucket=settings.sync.bucket,
        prefix=settings.sync.prefix,
        model=model_facts(model_dir, model_origin),
        data_dir=data_dir,
    )


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _session_line(record: StatusRecord) -> str | None:
    if not record.session_id:
        return None
    on = f" on {record.channel}" if record.channel else ""
    return (
        f"{record.session_id}{on}: {record.messages_total} messages, "
        f"{record.readings_total} readings"
    )


def _model_lines(model: ModelFacts, running_model: str = "") -> list[str]:
    """Which bundle is used and whether it is there; then, when known, whether it is a test
    model and how closely its int8 outputs matched the original at export."""
    if not model.present:
        named = missing_model(model.directory, model.origin)
        if named is not None:
            return [f"model: {named}"]
        return [
            f"model: none at {model.directory}: run `captaflow model get` (or `captaflow "
            f"export-model`) once, or pass --model DIR"
        ]
    if model.problem:
        return [
            f"model: the bundle at {model.directory} cannot be read ({model.problem}): run "
            f"`captaflow export-model` again"
        ]
    lines = [f"model: {model.model_id} at {model.directory}"]
    if running_model and running_model != model.model_id:
        lines[0] += f" (the running agent still uses {running_model}: restart it to switch)"
    if model.test_model:
        lines.append(f"test model: {model.test_model}; its emotions mean nothing")
    figures = []
    max_diff = model.parity.get("max_abs_diff")
    if isinstance(max_diff, int | float):
        figures.append(f"max diff {max_diff:.4f}")
    agreement = model.parity.get("top_label_agreement")
    if isinstance(agreement, int | float):
        figures.append(f"top label agreement {agreement:.0%}")
    if figures:
        lines.append("parity: int8 vs the original, " + ", ".join(figures))
    return lines


def _sync_line(facts: StatusFacts, upload_state: str) -> str:
    if not facts.bucket:
        return "sync: off (no bucket: pass --bucket NAME or set sync.bucket)"
    target = f"s3://{facts.bucket}/{facts.prefix}/" if facts.prefix else f"s3://{facts.bucket}/"
    if not facts.sync_enabled:
        return f"sync: off (sync.enabled = false; the bucket would be {target})"
    return f"sync: to {target}" + (f", {upload_state}" if upload_state else "")


def _checked_at_entry(source: Mapping[str, str]) -> str | None:
    """What the source could not use as sent (agent.sources.entry), when there was any."""
    parts = []
    for key, what in (
        ("times_replaced", "message times replaced by the receive time"),
        ("frames_skipped", "unusable frames skipped"),
    ):
        count = str(source.get(key, "0"))
        if count.isdigit() and int(count):
            parts.append(f"{count} {what}")
    return "checked at entry: " + ", ".join(parts) if parts else None


def _count_of(source: Mapping[str, str], key: str) -> int:
    # The status file keeps the source's counters as text (its `source` is text to text).
    raw = str(source.get(key, "0")).strip()
    return int(raw) if raw.isdigit() else 0


def _checked_input_line(record: StatusRecord) -> str | None:
    """What the source's entry checks changed, when they changed anything."""
    replaced = _count_of(record.source, "times_replaced")
    skipped = _count_of(record.source, "frames_skipped")
    said = []
    if replaced:
        said.append(f"{replaced} message time(s) out of range replaced by the receive time")
    if skipped:
        said.append(f"{skipped} frame(s) skipped (not valid, too large or too deep)")
    return "checked input: " + ", ".join(said) if said else None


def status_lines(facts: StatusFacts) -> list[str]:
    """The lines `captaflow status` prints, in order."""
    record = facts.record
    # The file describes the running agent only when the lock holder wrote it; otherwise it
    # is what the last agent said before it ended (or was killed).
    live = (
        record
        if record is not None
        and facts.running_pid is not None
        and record.pid in (facts.running_pid, 0)
        else None
    )
    lines: list[str] = []
    if facts.running_pid is not None:
        pid = f" (pid {facts.running_pid})" if facts.running_pid else ""
        state = live.state if live is not None and live.state != "stopped" else "running"
        lines.append(f"agent: {state}{pid}")
        if live is not None:
            link = " ".join(
                part for part in (live.source.get("state"), live.source.get("detail")) if part
            )
            if link:
                lines.append(f"source: {link}")
            checked = _checked_at_entry(live.source)
            if checked:
                lines.append(checked)
            session = _session_line(live)
            if session:
                lines.append(f"session: {session}")
            if live.dominant:
                lines.append(f"chat feels: {live.dominant} (the latest reading)")
            if live.problem:
                lines.append(f"problem: {live.problem}")
    else:
        lines.append("agent: not running")
        session = _session_line(record) if record is not None else None
        if record is not None and session:
            ago = _ago(facts.record_age)
            lines.append(f"last session: {session}" + (f" (last seen {ago})" if ago else ""))
            if record.problem:
                lines.append(f"last problem: {record.problem}")
        if facts.parts_open or (record is not None and record.state != "stopped"):
            lines.append(
                "last run: did not stop cleanly (killed or crashed); the next start recovers "
                "what it left"
            )
    shown = live if live is not None else record if facts.running_pid is None else None
    if shown is not None:
        source_problem = shown.source.get("problem", "")
        if source_problem and source_problem != shown.problem:
            lines.append(f"source problem: {source_problem}")
        checked = _checked_input_line(shown)
        if checked:
            lines.append(checked)
        if shown.set_aside_total:
            lines.append(
                f"set aside: {shown.set_aside_total} window(s) that could not be scored or "
                f"written (the log says why)"
            )
    spool = (
        f"spool: {facts.parts_waiting} part(s) waiting for upload, {facts.parts_uploaded} uploaded"
    )
    if facts.parts_set_aside:
        spool += f", {facts.parts_set_aside} set aside in {facts.spool_dir / CORRUPT_DIR}"
    lines.append(spool)
    lines.append(_sync_line(facts, live.upload_state if live is not None else ""))
    lines.extend(_model_lines(facts.model, live.model_id if live is not None else ""))
    lines.append(f"data: {facts.data_dir}")
    return lines
