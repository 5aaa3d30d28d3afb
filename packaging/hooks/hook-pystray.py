"""pystray picks its backend at import time (`pystray.backend()`), so analysis cannot see it.

The contrib hook collects the submodules by importing pystray, and on Linux that import
connects to the X display: a headless build (CI) then collects nothing and the executable
has no tray backend. This hook names the backends without importing anything.
"""

import sys

if sys.platform == "win32":
    hiddenimports = ["pystray._win32", "pystray._util", "pystray._util.win32"]
elif sys.platform == "darwin":
    hiddenimports = ["pystray._darwin"]
else:
    # agent/tray.py picks one at run time: appindicator where a StatusNotifier host runs,
    # gtk in an XEmbed tray (both need PyGObject, which the Linux build carries along with
    # GTK), xorg without them (works everywhere X does, and under XWayland; no menu).
    hiddenimports = [
        "pystray._xorg",
        "pystray._appindicator",
        "pystray._gtk",
        "pystray._util",
        "pystray._util.gtk",
        "pystray._util.notify_dbus",
    ]
hiddenimports += ["pystray._base", "pystray._info", "pystray._dummy"]
