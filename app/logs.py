"""Logging for app, uvicorn and monitor, set up once: LOG_FILE (rotated by size) and the console."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from logging.handlers import RotatingFileHandler

from app.config import ConfigError, Settings
from utils.concurrency_monitor import LOG_FORMAT, LOGGER_NAME

TRACE = 5  # uvicorn's "trace" level
LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


# Names of the handlers installed here, so that a second call replaces them instead of adding more.
_HANDLER_PREFIX = "proxy:"


class _StripQuery(logging.Filter):
    """uvicorn's access line carries the full path: drop the query string, which may hold a key."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


class _QuietRotatingFileHandler(RotatingFileHandler):
    """A log file that fails (deleted folder, full disk, /dev/full) must not stop the proxy nor print
    a traceback per record: the failure is said once on stderr, and again only after it recovered."""

    failing = False

    def emit(self, record: logging.LogRecord) -> None:
        self._reopen_if_deleted()
        super().emit(record)
        if self.failing and self.stream is not None:
            self.failing = False

    def _reopen_if_deleted(self) -> None:
        """As logging.handlers.WatchedFileHandler: a log deleted (or moved) under us is made anew."""
        if self.stream is None:
            return
        try:
            on_disk = os.stat(self.baseFilename)
            opened = os.fstat(self.stream.fileno())
        except FileNotFoundError:
            on_disk = opened = None
        except (OSError, ValueError):
            return
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (opened.st_dev, opened.st_ino):
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"proxy: the log {self.baseFilename} was deleted or replaced: writing a new one\n")
                self.stream.close()
            self.stream = None  # type: ignore[assignment]

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failing:
            self.failing = True
            error = sys.exc_info()[1]
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"proxy: cannot write to the log {self.baseFilename}: {error}; still serving\n")
        # Reopen on the next record (the file may have been deleted or rotated away).
        with contextlib.suppress(OSError, ValueError):
            if self.stream is not None:
                self.stream.close()
        self.stream = None  # type: ignore[assignment]


def level_of(settings: Settings) -> int:
    return LEVELS[settings.log_level]


def configure_logging(settings: Settings) -> None:
    """Route every logger to LOG_FILE and the console. Metric lines pass whatever LOG_LEVEL says."""
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    directory = os.path.dirname(settings.log_file)
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        file_handler = _QuietRotatingFileHandler(
            settings.log_file, maxBytes=settings.log_max_bytes, backupCount=settings.log_backup_count, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(f"LOG_FILE={settings.log_file!r} cannot be opened: {exc.strerror}") from None
    handlers.append(file_handler)
    if settings.log_console:
        handlers.append(logging.StreamHandler())

    root = logging.getLogger()
    for old in [h for h in root.handlers if (h.get_name() or "").startswith(_HANDLER_PREFIX)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.set_name(_HANDLER_PREFIX + type(handler).__name__)
        handler.setFormatter(formatter)
        root.addHandler(handler)

    level = level_of(settings)
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    # One line per request is for debugging only: at info and above it is off.
    access.setLevel(level if level <= logging.DEBUG else logging.WARNING)
    if not any(isinstance(f, _StripQuery) for f in access.filters):
        access.addFilter(_StripQuery())
    # At trace level uvicorn's "uvicorn.asgi" logger dumps every ASGI scope and message: headers
    # (Authorization) and bodies. Never: found by tests/reliability/test_inputs.py.
    logging.getLogger("uvicorn.asgi").setLevel(max(level, logging.DEBUG))
    # The metric lines are INFO and are never silenced by LOG_LEVEL.
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    # HTTP client libraries log every request (URL with query string) at info/debug: never wanted.
    for name in ("httpx", "httpcore", "httpx2", "httpcore2", "aiohttp"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
