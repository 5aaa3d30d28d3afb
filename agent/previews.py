"""The console previews, made for a person at a terminal.

1. each message with its readings (the displayed emotions, highest first),
2. each window's result (the mean per displayed emotion as bars, and the dominant one),
3. at stop, a summary of all readings of the session.

Everything fits the terminal's width (100 columns when the output is not a terminal, or
`COLUMNS`), is measured in terminal cells so emoji and CJK text keep the columns aligned
(rich's cell widths), is coloured only when the output is a terminal (and `NO_COLOR` is
unset), and says so when the readings come from a test model (`test_model` in the bundle's
manifest): its emotions are random.

For a replay at full speed, printing every line would scroll thousands of lines past in
seconds: `ConsolePreviews(fast=True)` shows a progress bar (on a terminal) and a short
summary every `summary_every` readings instead; `--verbose` brings every line back.

The `format_*` functions are pure (plain strings out, for tests and `captaflow score`);
`ConsolePreviews` decides what to print and how.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any, TextIO

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from agent.vocab import LABELS, Reading, format_timestamp

PREVIEW_KINDS = ("message", "batch", "summary")
DEFAULT_WIDTH = 100
MIN_WIDTH = 40
SUMMARY_EVERY = 25
MIN_TEXT = 36  # cells of message text kept before emotions are dropped from a line
# Colours per emotion for the terminal (rich colour names; the tray uses hex colours).
EMOTION_STYLES: dict[str, str] = {
    "anger": "red",
    "anticipation": "dark_orange",
    "disgust": "green4",
    "fear": "medium_purple",
    "joy": "yellow",
    "love": "hot_pink",
    "optimism": "cyan",
    "pessimism": "grey62",
    "sadness": "dodger_blue1",
    "surprise": "orange_red1",
    "trust": "green",
}


def terminal_width(stream: TextIO | None = None, default: int = DEFAULT_WIDTH) -> int:
    """The width to fit: the terminal's, else `COLUMNS`, else `default`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(MIN_WIDTH, int(columns))
    target = stream or sys.stdout
    try:
        if target.isatty():
            return max(MIN_WIDTH, os.get_terminal_size(target.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    return default


def fit(text: str, cells: int) -> str:
    """One line of exactly `cells` terminal cells: whitespace folded, cut with an ellipsis."""
    flat = " ".join(text.split())
    flat = flat.encode("utf-8", "replace").decode("utf-8")
    if cell_len(flat) > cells:
        flat = set_cell_size(flat, max(0, cells - 1)) + "…"
    return set_cell_size(flat, cells)


def _ranked(scores: Sequence[float], displayed: Sequence[str]) -> list[tuple[str, float]]:
    return sorted(
        ((label, float(scores[LABELS.index(label)])) for label in displayed),
        key=lambda pair: -pair[1],
    )


def format_message_line(
    text: str,
    scores: Sequence[float],
    displayed: Sequence[str],
    width: int = DEFAULT_WIDTH,
    *,
    pad: bool = False,
) -> str:
    """`PogU what a play        │ 0.81 joy       0.44 surprise  0.30 optimism` in `width` cells.

    The emotions are ranked highest first, each in a column of the same width so the lines
    stay aligned; as many as fit after at least 36 cells of text (at least one).
    """
    ranked = _ranked(scores, displayed)
    column = max(len(label) for label in displayed) + 5  # "surprise 0.44"
    fits = max(1, min(len(ranked), (width - 3 - MIN_TEXT + 2) // (column + 2)))
    tail = "  ".join(f"{value:.2f} {label}".ljust(column) for label, value in ranked[:fits])
    tail = tail if pad else tail.rstrip()  # pad: something follows the line (score's →)
    text_cells = max(8, width - 3 - ((column + 2) * fits - 2))
    return f"{fit(text, text_cells)} │ {tail}"


def _bar(value: float, cells: int) -> str:
    eighths = round(max(0.0, min(1.0, value)) * cells * 8)
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest].strip() if rest else ""
    return "█" * full + partial


def _window_head(reading: Reading) -> str:
    sampled = (
        f", {reading.scored_count} scored to keep up"
        if reading.scored_count < reading.message_count
        else ""
    )
    start = format_timestamp(reading.window_start)[11:19]
    end = format_timestamp(reading.window_end)[11:19]
    noun = "message" if reading.message_count == 1 else "messages"
    return f"window #{reading.seq} · {reading.message_count} {noun}{sampled} · {start}–{end} UTC"


def format_batch(reading: Reading, displayed: Sequence[str], width: int = DEFAULT_WIDTH) -> str:
    """The window's means as bars, one emotion a line, the dominant one marked."""
    head = fit(f"── {_window_head(reading)} ", width).rstrip() + " "
    lines = [head + "─" * max(0, min(width, 72) - cell_len(head))]
    bar_cells = max(10, min(40, width - 34))
    for label in displayed:
        value = reading.scores[LABELS.index(label)]
        marker = "  ◀ dominant" if label == reading.dominant else ""
        lines.append(f"  {label:>12} {value:4.2f} {_bar(value, bar_cells):<{bar_cells}}{marker}")
    return "\n".join(line.rstrip() for line in lines)


def format_progress_summary(
    readings: Sequence[Reading],
    displayed: Sequence[str],
    messages: int,
    width: int = DEFAULT_WIDTH,
) -> str:
    """One line for the latest stretch of a fast replay: which windows, the top means."""
    if not readings:
        return f"{messages} messages, no readings yet"
    means = {
        label: sum(r.scores[LABELS.index(label)] for r in readings) / len(readings)
        for label in displayed
    }
    ranked = sorted(means.items(), key=lambda pair: -pair[1])
    first, last = readings[0], readings[-1]
    start = format_timestamp(first.window_start)[11:19]
    end = format_timestamp(last.window_end)[11:19]
    head = f"windows #{first.seq}–#{last.seq} · {start}–{end} UTC ·"
    line = head
    for count in range(1, len(ranked) + 1):
        figures = "  ".join(f"{label} {value:.2f}" for label, value in ranked[:count])
        candidate = f"{head} {figures}"
        if cell_len(candidate) > width and count > 1:
            break
        line = candidate
    return fit(line, width).rstrip()


def summary_table(
    readings: Sequence[Reading], displayed: Sequence[str], max_rows: int, width: int
) -> Table:
    """The session's readings, one a row; on a narrow terminal the headings shrink."""
    short = width < 90
    table = Table(
        box=None, pad_edge=False, header_style="bold", show_edge=False, padding=(0, 2, 0, 0)
    )
    table.add_column("UTC" if short else "time (UTC)", no_wrap=True)
    for label in displayed:
        table.add_column(label[:4] if short else label, justify="right", no_wrap=True)
    table.add_column("msgs", justify="right", no_wrap=True)
    table.add_column("dominant", no_wrap=True)
    rows = list(readings)
    skipped = 0
    if len(rows) > max_rows:
        head = max_rows // 2
        skipped = len(rows) - max_rows
        rows = rows[:head] + rows[len(rows) - (max_rows - head) :]
    for index, reading in enumerate(rows):
        if skipped and index == max_rows // 2:
            table.add_row("…", *[""] * (len(displayed) + 1), f"{skipped} more")
        table.add_row(
            format_timestamp(reading.window_start)[11:19],
            *(f"{reading.scores[LABELS.index(label)]:.2f}" for label in displayed),
            str(reading.message_count),
            Text(reading.dominant, style=EMOTION_STYLES.get(reading.dominant, "")),
        )
    return table


def summary_head(readings: Sequence[Reading], test_model: str | None = None) -> str:
    if not readings:
        return "── READINGS SUMMARY: no readings this session"
    first = readings[0]
    day = format_timestamp(first.window_start)[:10]
    messages = sum(r.message_count for r in readings)
    head = (
        f"── READINGS SUMMARY · {len(readings)} readings of {messages} messages · {day}\n"
        f"session {first.session_id}"
    )
    if test_model:
        head += f"\n⚠ TEST MODEL ({test_model}): these emotions are random, not the chat's"
    return head


def format_summary(
    readings: Sequence[Reading],
    displayed: Sequence[str],
    max_rows: int = 40,
    width: int = DEFAULT_WIDTH,
    test_model: str | None = None,
) -> str:
    """All readings of the session as a table that fits `width`, then the session's means."""
    out = StringIO()
    console = _console(out, width=width, colour=False)
    _print_summary(console, readings, displayed, max_rows, test_model)
    return out.getvalue().rstrip("\n")


def _print_summary(
    console: Console,
    readings: Sequence[Reading],
    displayed: Sequence[str],
    max_rows: int,
    test_model: str | None,
) -> None:
    # The heading and the means wrap at word boundaries on a narrow terminal.
    console.print(Text(summary_head(readings, test_model), style="bold"), soft_wrap=False)
    if not readings:
        return
    console.print(summary_table(readings, displayed, max_rows, console.width))
    means = "  ".join(
        f"{label} {sum(r.scores[LABELS.index(label)] for r in readings) / len(readings):.2f}"
        for label in displayed
    )
    console.print(Text(f"session means: {means}"), soft_wrap=False)


def test_model_banner(label: str) -> str:
    return f"⚠ TEST MODEL: {label}. Random weights: these emotions mean nothing about the chat."


def _console(stream: TextIO, *, width: int, colour: bool) -> Console:
    return Console(
        file=stream,
        width=width,
        force_terminal=colour,
        no_color=not colour,
        color_system="auto" if colour else None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
        legacy_windows=None,
    )


class ConsolePreviews:
    """Prints the previews the settings ask for (default: all three) to a terminal or a pipe."""

    def __init__(
        self,
        displayed: Sequence[str],
        kinds: Sequence[str] = PREVIEW_KINDS,
        stream: TextIO | None = None,
        *,
        fast: bool = False,
        total: int | None = None,
        test_model: str | None = None,
        width: int | None = None,
        colour: bool | None = None,
        summary_every: int = SUMMARY_EVERY,
    ) -> None:
        self.displayed = tuple(displayed)
        self.kinds = frozenset(kinds)
        self.stream = stream or sys.stdout
        self.fast = fast
        self.test_model = test_model
        self.summary_every = max(1, summary_every)
        is_tty = _isatty(self.stream)
        self.colour = (is_tty and not os.environ.get("NO_COLOR")) if colour is None else colour
        self.width = width or terminal_width(self.stream)
        self.console = _console(self.stream, width=self.width, colour=self.colour)
        self._banner_shown = False
        self._messages = 0
        self._stretch: list[Reading] = []
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._total = total
        self._show_bar = fast and is_tty

    # -- printing -------------------------------------------------------------------------

    def _out(self, thing: Any, style: str = "", wrap: bool = False) -> None:
        """Print one preview; `wrap` folds it at word boundaries instead of the terminal's edge."""
        try:
            console = self._progress.console if self._progress is not None else self.console
            console.print(thing, style=style or None, soft_wrap=not wrap)
            self.stream.flush()
        except (UnicodeEncodeError, ValueError):
            # A legacy Windows console code page cannot show every character; never let a
            # preview take the agent down.
            plain = thing.plain if isinstance(thing, Text) else str(thing)
            with contextlib.suppress(OSError, ValueError):
                print(plain.encode("ascii", "replace").decode("ascii"), file=self.stream)

    def _banner(self) -> None:
        if self._banner_shown:
            return
        self._banner_shown = True
        if self.test_model:
            self._out(
                Text(test_model_banner(self.test_model)), style="bold black on yellow", wrap=True
            )

    def _bar(self) -> None:
        if not self._show_bar or self._progress is not None:
            return
        self._progress = Progress(
            TextColumn("replaying"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("messages · {task.fields[readings]} readings"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            expand=False,
        )
        self._task = self._progress.add_task("replay", total=self._total, readings=0)
        self._progress.start()

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- what the agent calls -------------------------------------------------------------

    def message(self, text: str, scores: Sequence[float]) -> None:
        self._banner()
        self._messages += 1
        if self.fast:
            self._bar()
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task)
            return
        if "message" in self.kinds:
            line = format_message_line(text, scores, self.displayed, self.width)
            if not self.colour:
                self._out(Text(line))
                return
            body, _, tail = line.partition(" │ ")
            styled = Text(body)
            styled.append(" │ ", style="dim")
            for index, figure in enumerate(tail.split("  ")):
                label = figure.split()[-1] if figure.strip() else ""
                if index:
                    styled.append("  ")
                styled.append(figure, style=EMOTION_STYLES.get(label, ""))
            self._out(styled)

    def batch(self, reading: Reading) -> None:
        self._banner()
        if self.fast:
            self._stretch.append(reading)
            if self._progress is not None and self._task is not None:
                readings = int(self._progress.tasks[0].fields.get("readings", 0)) + 1
                self._progress.update(self._task, readings=readings)
            if len(self._stretch) >= self.summary_every and "batch" in self.kinds:
                self._out(Text(self._stretch_line()))
                self._stretch = []
            return
        if "batch" not in self.kinds:
            return
        if not self.colour:
            self._out(Text(format_batch(reading, self.displayed, self.width)))
            return
        lines = format_batch(reading, self.displayed, self.width).split("\n")
        self._out(Text(lines[0], style="bold"))
        for line, label in zip(lines[1:], self.displayed, strict=True):
            style = EMOTION_STYLES.get(label, "")
            if label == reading.dominant:
                style = f"bold {style}"
            self._out(Text(line, style=style))

    def _stretch_line(self) -> str:
        return format_progress_summary(self._stretch, self.displayed, self._messages, self.width)

    def summary(self, readings: Sequence[Reading]) -> None:
        self._banner()
        if self.fast and self._stretch and "batch" in self.kinds:
            self._out(Text(self._stretch_line()))
            self._stretch = []
        self._stop_bar()
        if "summary" in self.kinds:
            try:
                _print_summary(self.console, readings, self.displayed, 40, self.test_model)
                self.stream.flush()
            except (UnicodeEncodeError, ValueError):
                text = format_summary(readings, self.displayed, 40, self.width, self.test_model)
                self._out(Text(text))


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _count_lines(path: Path | None) -> int | None:
    if path is None or not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def console_previews(
    settings: Any, *, quiet: bool = False, verbose: bool = False, fast: bool | None = None
) -> ConsolePreviews:
    """The previews for a command's settings.

    `fast` (default: a replay at "max" speed) switches to the progress bar and periodic
    summaries unless `verbose`; `quiet` drops the per-message lines.
    """
    from agent.model_download import bundle_test_label

    source = settings.source
    if fast is None:
        fast = source.kind == "replay" and source.speed == "max"
    kinds = [k for k in settings.display.previews if not (quiet and k == "message")]
    total = _count_lines(source.file) if source.kind == "replay" else None
    return ConsolePreviews(
        settings.display.emotions,
        kinds,
        fast=fast and not verbose,
        total=total,
        test_model=bundle_test_label(settings.model.dir),
    )
