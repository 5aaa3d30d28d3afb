"""The three console previews the original prototype's users liked.

1. each message with its readings (the displayed emotions),
2. each batch's result (the window's mean per displayed emotion, and the dominant one),
3. at stop, a summary of all readings of the session with timestamps and stream id.

Formatting is pure (strings out); `ConsolePreviews` only decides which to print and where.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from agent.vocab import LABELS, Reading, format_timestamp

PREVIEW_KINDS = ("message", "batch", "summary")
_BAR_WIDTH = 20


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    flat = flat.encode("utf-8", "replace").decode("utf-8")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_message_line(text: str, scores: Sequence[float], displayed: Sequence[str]) -> str:
    """`Message: PogU what a play | joy 0.81 surprise 0.44 optimism 0.30 ...` (highest first)."""
    pairs = sorted(
        ((label, float(scores[LABELS.index(label)])) for label in displayed),
        key=lambda pair: -pair[1],
    )
    figures = "  ".join(f"{label} {value:.2f}" for label, value in pairs)
    return f"Message: {_one_line(text, 48):<48} | {figures}"


def format_batch(reading: Reading, displayed: Sequence[str]) -> str:
    sampled = (
        f", scored a sample of {reading.scored_count} to keep up"
        if reading.scored_count < reading.message_count
        else ""
    )
    head = (
        f"------- BATCH RESULTS #{reading.seq} ({reading.message_count} messages{sampled}; "
        f"{format_timestamp(reading.window_start)[11:]}–{format_timestamp(reading.window_end)[11:]}"
        f" UTC) -------"
    )
    lines = [head]
    for label in displayed:
        value = reading.scores[LABELS.index(label)]
        bar = "█" * round(value * _BAR_WIDTH)
        marker = "  ◀ dominant" if label == reading.dominant else ""
        lines.append(f"{label.upper():>9} {value:5.2f} {bar:<{_BAR_WIDTH}}{marker}")
    return "\n".join(lines)


def format_summary(
    readings: Sequence[Reading], displayed: Sequence[str], max_rows: int = 60
) -> str:
    """All readings of the session as a table (pandas), with timestamps and the stream id."""
    if not readings:
        return "------- READINGS SUMMARY -------\n(no readings this session)"
    import pandas as pd  # only the summary needs pandas: keep it off the start-up path

    frame = pd.DataFrame(
        {
            "window_start": [format_timestamp(r.window_start) for r in readings],
            **{
                label: [round(r.scores[LABELS.index(label)], 2) for r in readings]
                for label in displayed
            },
            "messages": [r.message_count for r in readings],
            "dominant": [r.dominant for r in readings],
            "session_id": [r.session_id for r in readings],
        }
    )
    with pd.option_context("display.max_rows", max_rows, "display.width", 200):
        table = frame.to_string(index=False, max_rows=max_rows)
    means = "  ".join(
        f"{label} {sum(r.scores[LABELS.index(label)] for r in readings) / len(readings):.2f}"
        for label in displayed
    )
    return (
        f"------- READINGS SUMMARY: session {readings[0].session_id} "
        f"({len(readings)} readings, {sum(r.message_count for r in readings)} messages) -------\n"
        f"{table}\nsession means: {means}"
    )


class ConsolePreviews:
    """Prints the previews that the settings ask for (default: all three)."""

    def __init__(
        self,
        displayed: Sequence[str],
        kinds: Sequence[str] = PREVIEW_KINDS,
        stream: TextIO | None = None,
    ) -> None:
        self.displayed = tuple(displayed)
        self.kinds = frozenset(kinds)
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (UnicodeEncodeError, ValueError):
            # A legacy Windows console code page cannot show every character; never let a
            # preview take the agent down.
            safe = text.encode("ascii", "replace").decode("ascii")
            print(safe, file=self.stream, flush=True)

    def message(self, text: str, scores: Sequence[float]) -> None:
        if "message" in self.kinds:
            self._print(format_message_line(text, scores, self.displayed))

    def batch(self, reading: Reading) -> None:
        if "batch" in self.kinds:
            self._print(format_batch(reading, self.displayed))

    def summary(self, readings: Sequence[Reading]) -> None:
        if "summary" in self.kinds:
            self._print(format_summary(readings, self.displayed))
