"""The tray icon, drawn at run time with pillow: nothing to ship, crisp at any size.

A speech bubble (chat) holding a small wave (how it feels). The bubble's colour says the
state at a glance — grey stopped, green running, amber trouble, red failed — and a dot in the
corner takes the colour of the chat's dominant emotion while running.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

from PIL import Image, ImageDraw


class IconState(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    TROUBLE = "trouble"
    FAILED = "failed"
    SETUP = "setup"  # first run: the model or the channel is missing


STATE_COLOURS: dict[IconState, str] = {
    IconState.STOPPED: "#8a9099",
    IconState.RUNNING: "#2e9e4f",
    IconState.TROUBLE: "#e89a1c",
    IconState.FAILED: "#d23c3c",
    IconState.SETUP: "#5b7bd5",
}

# One colour per model label, chosen so the six shown by default differ at 6 pixels.
EMOTION_COLOURS: dict[str, str] = {
    "anger": "#e53935",
    "anticipation": "#ff9800",
    "disgust": "#6d8b2f",
    "fear": "#7e57c2",
    "joy": "#fdd835",
    "love": "#ec407a",
    "optimism": "#26c6da",
    "pessimism": "#546e7a",
    "sadness": "#1e63d6",
    "surprise": "#ff7043",
    "trust": "#43a047",
}

ICON_SIZES = (16, 24, 32, 48, 64, 128, 256)


def render_icon(state: IconState, emotion: str | None = None, size: int = 64) -> Image.Image:
    """The icon for `state`, with the emotion dot when `emotion` is given."""
    # Drawn 4x larger and scaled down: pillow's shapes are not anti-aliased.
    scale = 4
    big = size * scale
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    u = big / 64  # one unit of a 64x64 design grid

    colour = STATE_COLOURS[state]
    # The bubble and its tail (bottom left).
    draw.rounded_rectangle((4 * u, 6 * u, 60 * u, 46 * u), radius=12 * u, fill=colour)
    draw.polygon([(14 * u, 42 * u), (12 * u, 58 * u), (28 * u, 44 * u)], fill=colour)

    # The wave across the bubble: one sine period, drawn as a thick polyline.
    points = []
    for step in range(41):
        x = 13 + step * (38 / 40)
        y = 26 - 8 * math.sin(step / 40 * 2 * math.pi)
        points.append((x * u, y * u))
    draw.line(points, fill="white", width=round(5 * u), joint="curve")
    for end in (points[0], points[-1]):
        r = 2.5 * u
        draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill="white")

    if state is IconState.SETUP:
        # An exclamation mark in the corner badge: "something to do before the first start".
        _badge(draw, u, "#ffffff", outline=colour)
        draw.rectangle((50 * u, 44 * u, 54 * u, 54 * u), fill=colour)
        draw.rectangle((50 * u, 56 * u, 54 * u, 60 * u), fill=colour)
    elif emotion in EMOTION_COLOURS:
        _badge(draw, u, EMOTION_COLOURS[emotion], outline="#ffffff")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _badge(draw: ImageDraw.ImageDraw, u: float, fill: str, *, outline: str) -> None:
    draw.ellipse((40 * u, 40 * u, 64 * u, 64 * u), fill=fill, outline=outline, width=round(3 * u))


def write_icon_files(folder: Path) -> tuple[Path, Path]:
    """captaflow.ico (all sizes Windows asks for) and captaflow.png, for the executable."""
    folder.mkdir(parents=True, exist_ok=True)
    image = render_icon(IconState.RUNNING, size=256)
    ico = folder / "captaflow.ico"
    png = folder / "captaflow.png"
    image.save(ico, format="ICO", sizes=[(s, s) for s in ICON_SIZES])
    image.save(png, format="PNG")
    return ico, png
