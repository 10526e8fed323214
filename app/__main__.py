"""`python -m app`: validate the settings, then become `python -m uvicorn app.main:app ...`.

The process replaces itself (same pid) with the uvicorn command line built from the settings,
so that `ps aux | grep uvicorn` finds it, as the integration guide expects. A bad setting is
one line and exit 1 before anything starts.
"""

from __future__ import annotations

import logging
import os
import sys

from app.config import Settings
from app.logs import level_of
from app.main import load_settings_or_exit
from app.workers import reset_board


def uvicorn_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--log-level",
        settings.log_level,
        # One access line per request is for debugging only (and app.logs strips query strings).
        "--access-log" if level_of(settings) <= logging.DEBUG else "--no-access-log",
        "--timeout-graceful-shutdown",
        str(max(1, round(settings.stop_timeout))),
        "--no-server-header",
        "--no-proxy-headers",
    ]


def main() -> None:
    settings = load_settings_or_exit()
    if settings.workers > 1 and settings.enable_concurrency_monitor:
        reset_board(settings)  # the workers' shared folder starts empty
    argv = uvicorn_argv(settings)
    sys.stdout.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
