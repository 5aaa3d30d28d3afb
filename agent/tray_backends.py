"""Mends for pystray's bare X11 backend (`pystray._xorg`), used on Linux without PyGObject.

Three faults a streamer saw, all in pystray 0.19's xorg backend:

* **A click did nothing.** The window is created without ButtonPressMask, so its click
  handler never runs. Mended: the window asks for button presses.

* **The icon collapsed to a 1x30 px sliver.** Every icon change (Start, Stop, a new
  emotion) sends the tray manager a new "dock me" request; trayer then re-embeds the window
  and lays it out from its current, not yet configured, size. The icon is then stretched
  into whatever geometry the window has. Mended: dock only when not docked, and draw the
  icon as a square centred in the window, whatever its shape.
* **Transparent corners drew black.** The backend pastes the RGBA icon onto a black RGB
  image. Mended: the window's background is its parent's (ParentRelative) and an X Shape
  mask cut from the icon's alpha makes the corners truly see-through; pixels are drawn at
  their own colour, so no dark fringe either.

The GTK and AppIndicator backends (PyGObject installed) and the Windows and macOS ones
draw alpha themselves and are left as they are.
"""

from __future__ import annotations

import contextlib
import logging
import types
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

ALPHA_CUT = 110  # pixels at least this opaque are part of the icon's shape


def adapt_icon(icon: Any) -> Any:
    """Apply the xorg mends to a pystray icon of that backend; GTK ones get a notifier that
    survives a missing D-Bus session; others pass through."""
    module = type(icon).__module__
    if module in ("pystray._gtk", "pystray._appindicator"):
        _tolerant_notifier()
        return icon
    if module != "pystray._xorg":
        return icon
    try:
        _mend_xorg(icon)
    except Exception:  # never let a cosmetic mend keep the tray from starting
        log.warning("could not mend the X11 tray icon", exc_info=True)
    return icon


def _tolerant_notifier() -> None:
    """pystray's GTK backends open a D-Bus notifier when their loop starts and die when
    there is no session bus (a bare X session, some kiosk setups): the icon and its menu
    do not need one, so without a bus notifications are simply off."""
    from pystray._util import notify_dbus

    original = notify_dbus.Notifier
    if getattr(original, "_captaflow_tolerant", False):
        return

    class Notifier:
        _captaflow_tolerant = True

        def __init__(self) -> None:
            try:
                self._inner: Any = original()
            except Exception as error:
                log.info("no D-Bus session (%s): tray notifications are off", error)
                self._inner = None

        def notify(self, title: str, message: str, icon: str) -> None:
            if self._inner is not None:
                self._inner.notify(title, message, icon)

        def hide(self) -> None:
            if self._inner is not None:
                with contextlib.suppress(Exception):
                    self._inner.hide()

    notify_dbus.Notifier = Notifier


def square_icon(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` as a centred square as large as fits in width x height, on transparency."""
    width, height = max(1, width), max(1, height)
    side = max(1, min(width, height))
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    scaled = image.convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
    canvas.paste(scaled, ((width - side) // 2, (height - side) // 2))
    return canvas


def shape_of(image: Image.Image) -> Image.Image:
    """The 1-bit mask of the pixels opaque enough to draw."""
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a >= ALPHA_CUT else 0).convert("1")


def _mend_xorg(icon: Any) -> None:
    import Xlib.X

    display = icon._display
    window = icon._window
    has_shape = bool(display.has_extension("SHAPE"))
    # Show the tray's own background wherever the icon does not draw; and ask for clicks:
    # pystray handles ButtonPress (a left click runs the default entry) but creates its
    # window without ButtonPressMask, so X never delivered one.
    window.change_attributes(
        background_pixmap=Xlib.X.ParentRelative,
        event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask,
    )
    display.flush()
    original_update = type(icon)._update_icon.__get__(icon)

    def _assert_icon_data(self: Any, width: int, height: int) -> None:
        if self._icon_data is not None and self._icon_data.size == (width, height):
            return
        canvas = square_icon(self._icon, width, height)
        rgb = canvas.convert("RGB")  # each pixel its own colour: no black behind the edges
        self._icon_data = rgb
        self._icon_data.tostring = rgb.tobytes
        if has_shape:
            _set_shape(self, shape_of(canvas))

    def _update_icon(self: Any) -> None:
        if self._systray_manager is None:
            original_update()
            return
        self._icon_data = None
        self._draw()
        self._icon_valid = True

    icon._assert_icon_data = types.MethodType(_assert_icon_data, icon)
    # pystray routes _update_icon through its own X thread (a rewritten method); the mend
    # replaces the implementation that thread runs, keeping that routing.
    _reroute(icon, {"_update_icon": types.MethodType(_update_icon, icon)})


def _set_shape(icon: Any, mask: Image.Image) -> None:
    from Xlib.ext import shape

    window = icon._window
    width, height = mask.size
    pixmap = window.create_pixmap(width, height, 1)
    gc = pixmap.create_gc(foreground=1, background=0)
    pixmap.put_pil_image(gc, 0, 0, mask)
    window.shape_mask(shape.SO.Set, shape.SK.Bounding, 0, 0, pixmap)
    gc.free()
    pixmap.free()


ROUTED = ("_show", "_hide", "_update_icon", "_update_title", "_stop")


def _reroute(icon: Any, replacements: dict[str, Any]) -> None:
    """Redo pystray's `_rewrite_implementation` with some methods replaced.

    pystray runs these five methods on its X thread: each is swapped for a dispatcher that
    sends the loop an X client message `_PYSTRAY_<NAME>`, mapped to the implementation in one
    handler table. Calling the rewrite again with all five (the class's own, or ours) builds
    that table anew, so every message keeps working.
    """
    methods = []
    for name in ROUTED:
        method = replacements.get(name) or getattr(type(icon), name).__get__(icon)
        setattr(icon, name, method)
        methods.append(getattr(icon, name))
    icon._rewrite_implementation(*methods)
