"""Prefect's UI as ``make up`` serves it: the bundles Prefect ships, with the analytics removed.

    python infra/prefect_ui.py .stack/prefect-ui

Prefect's current UI (``/v2``) starts Amplitude with a key built into its JavaScript
whatever ``PREFECT_SERVER_ANALYTICS_ENABLED`` says, and the SDK then calls
``*.amplitude.com`` from the user's browser. This copies the UI bundles exactly as the
server does (``PREFECT_SERVER_UI_STATIC_DIRECTORY``, with the marker file that stops the
server from copying them again), then blanks that key, so the UI never starts the SDK:
with no key it neither loads its remote config nor sends an event. The server is then
started with the same ``PREFECT_SERVER_UI_STATIC_DIRECTORY``. Exits non-zero if a
Prefect upgrade moved the key, rather than serve a UI that calls out.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# the build's key getter: function um(){return`c97d...`}
KEY = re.compile(r"(function [\w$]+\(\)\{return)`[0-9a-f]{32}`\}")


def prepare(dest: Path) -> int:
    """Copy the bundles into ``dest`` (as the server would) and blank the analytics key; the
    number of keys blanked."""
    os.environ["PREFECT_SERVER_UI_STATIC_DIRECTORY"] = str(dest)
    from prefect.server.api.server import create_ui_app

    create_ui_app(ephemeral=False)  # the server's own copy step: bundles, base-path placeholder, marker
    blanked = 0
    for js in dest.rglob("*.js"):
        text = js.read_text(encoding="utf-8", errors="surrogateescape")
        if "amplitude.com" not in text:
            continue
        new, n = KEY.subn(r"\1``}", text)
        if n:
            js.write_text(new, encoding="utf-8", errors="surrogateescape")
            blanked += n
        elif "function" in text and not re.search(r"return``\}", text):
            raise SystemExit(f"{js}: Amplitude is in this Prefect UI but its key getter was not found")
    return blanked


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".stack/prefect-ui").resolve()
    n = prepare(out)
    print(f"Prefect UI in {out}: analytics key blanked in {n} place(s)")
