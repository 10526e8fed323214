"""Logging for app, uvicorn and monitor, set up once: LOG_FILE (rotated by size) and the console."""

from __future__ import annotations

import logging
import os
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
        file_handler = RotatingFileHandler(
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
    # The metric lines are INFO and are never silenced by LOG_LEVEL.
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    # HTTP client libraries log every request (URL with query string) at info/debug: never wanted.
    for name in ("httpx", "httpcore", "httpx2", "httpcore2", "aiohttp"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
