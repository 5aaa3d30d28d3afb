"""The console previews: they fit the terminal, align emoji, colour only a TTY, say TEST MODEL."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len

from agent.previews import (
    ConsolePreviews,
    format_batch,
    format_message_line,
    format_progress_summary,
    format_summary,
    terminal_width,
)
from agent.vocab import DEFAULT_DISPLAYED, LABELS, Reading

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TEXTS = [
    "hi chat",
    "🔥🔥🔥 POG 🔥🔥🔥 what a play, no way he hit that",
    "日本語のテキストもちゃんと揃う？ とても長いメッセージです、はい",
    "👨‍👩‍👧 family emoji and a flag 🇯🇵 and a skin tone 👍🏽",
    "x" * 400,
    "tabs\tand\nnewlines  in   it",
]


def scores(seed: int) -> tuple[float, ...]:
    return tuple(((seed * 7 + i * 13) % 100) / 100 for i in range(len(LABELS)))


def reading(seq: int, *, messages: int = 10, scored: int | None = None) -> Reading:
    values = scores(seq)
    return Reading(
        session_id="20261201t120000z-xqcow",
        platform="twitch",
        channel="xqcow",
        batch_id=f"b{seq}",
        seq=seq,
        window_start=1_764_590_400.0 + seq * 5,
        window_end=1_764_590_404.0 + seq * 5,
        message_count=messages,
        scored_count=messages if scored is None else scored,
        scores=values,
        dominant=max(DEFAULT_DISPLAYED, key=lambda label: values[LABELS.index(label)]),
        model_id="captaflow/tiny-random-roberta",
        agent_version="test",
    )


@pytest.mark.parametrize("width", [100, 80, 60, 140])
def test_message_lines_fit_and_keep_their_columns_with_emoji(width: int) -> None:
    lines = [
        format_message_line(t, scores(i), DEFAULT_DISPLAYED, width) for i, t in enumerate(TEXTS)
    ]
    for line in lines:
        assert cell_len(line) <= width, line
        assert "\n" not in line and "\t" not in line
    # The separator sits in the same terminal column on every line, whatever the text held.
    columns = {cell_len(line.split(" │ ")[0]) for line in lines}
    assert len(columns) == 1, lines
    assert "…" in lines[4]  # the long one is cut, visibly


def test_message_line_ranks_the_emotions() -> None:
    values = [0.0] * len(LABELS)
    values[LABELS.index("joy")] = 0.9
    values[LABELS.index("anger")] = 0.5
    line = format_message_line("PogU", values, DEFAULT_DISPLAYED, 100)
    tail = line.split(" │ ")[1]
    assert tail.startswith("0.90 joy") and tail.index("0.50 anger") > tail.index("0.90 joy")


@pytest.mark.parametrize("width", [100, 60])
def test_window_and_summary_fit(width: int) -> None:
    batch = format_batch(reading(3, messages=40, scored=12), DEFAULT_DISPLAYED, width)
    assert "12 scored to keep up" in batch and "◀ dominant" in batch
    summary = format_summary([reading(i) for i in range(120)], DEFAULT_DISPLAYED, width=width)
    line = format_progress_summary([reading(i) for i in range(25)], DEFAULT_DISPLAYED, 250, width)
    for text in (batch, summary, line):
        for row in text.splitlines():
            assert cell_len(row) <= width, row
    assert "READINGS SUMMARY" in summary and "session means:" in summary
    assert "80 more" in summary  # 120 rows folded to 40 with the middle left out
    assert line.startswith("windows #0–#24 ·")


def test_plain_when_piped_and_coloured_on_a_terminal() -> None:
    piped = io.StringIO()
    previews = ConsolePreviews(DEFAULT_DISPLAYED, stream=piped)
    previews.message("PogU", scores(1))
    previews.batch(reading(1))
    assert not ANSI.search(piped.getvalue()) and "PogU" in piped.getvalue()

    coloured = io.StringIO()
    previews = ConsolePreviews(DEFAULT_DISPLAYED, stream=coloured, colour=True, width=100)
    previews.message("PogU", scores(1))
    previews.batch(reading(1))
    assert ANSI.search(coloured.getvalue())
    assert ANSI.sub("", coloured.getvalue()) == piped.getvalue()


def test_fast_replay_prints_periodic_summaries_not_every_line() -> None:
    out = io.StringIO()
    previews = ConsolePreviews(DEFAULT_DISPLAYED, stream=out, fast=True, summary_every=25)
    for seq in range(60):
        for index in range(10):
            previews.message(f"message {seq}.{index}", scores(seq + index))
        previews.batch(reading(seq))
    previews.summary([reading(i) for i in range(60)])
    lines = out.getvalue().splitlines()
    assert not any(" │ " in line for line in lines)
    assert [line.split(" · ")[0] for line in lines if line.startswith("windows #")] == [
        "windows #0–#24",
        "windows #25–#49",
        "windows #50–#59",
    ]
    assert any("READINGS SUMMARY" in line for line in lines)


def test_a_test_model_says_so_once_and_in_the_summary() -> None:
    out = io.StringIO()
    previews = ConsolePreviews(DEFAULT_DISPLAYED, stream=out, test_model="tiny random model")
    previews.message("hi", scores(1))
    previews.message("hi again", scores(2))
    previews.summary([reading(1)])
    text = out.getvalue()
    assert text.count("TEST MODEL: tiny random model") == 1
    assert text.splitlines()[0].startswith("⚠ TEST MODEL")
    assert "TEST MODEL (tiny random model)" in text  # the summary's heading


def test_the_width_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "72")
    assert terminal_width(io.StringIO()) == 72
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 100


def test_the_demo_in_a_100_column_tmux(tmp_path: Path, tiny_bundle: Path) -> None:
    """What a person sees: `captaflow demo --speed 40` in a real terminal, 100 columns."""
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux")
    socket_name = f"captaflow-test-{os.getpid()}"
    env_line = (
        f"PYTHONPATH={ROOT} CAPTAFLOW_NO_KEYRING=1 CAPTAFLOW_DATA_DIR={tmp_path / 'data'} "
        f"CAPTAFLOW_CONFIG={tmp_path / 'config.toml'}"
    )
    done = tmp_path / "done"
    command = (
        f"env {env_line} {sys.executable} -m agent demo --model {tiny_bundle} --speed 40 "
        f"2>/dev/null; touch {done}; sleep 30"
    )
    tmux = ["tmux", "-L", socket_name]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "100", "-y", "50", "-s", "demo", command],
        check=True,
        timeout=30,
    )
    try:
        import time

        deadline = time.monotonic() + 240
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert done.exists(), "the demo did not finish"
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-e", "-t", "demo", "-S", "-50"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=30)
    plain = ANSI.sub("", screen)
    (tmp_path / "tmux-demo.txt").write_text(plain, encoding="utf-8")
    assert ANSI.search(screen), "a terminal gets colour"
    assert "session means:" in plain
    for line in plain.splitlines():
        assert cell_len(line.rstrip()) <= 100, line
