"""`python -m app`: validate the settings, set up logging, and serve the proxy with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from app.logs import configure_logging, level_of
from app.main import load_settings_or_exit


def main() -> None:
    settings = load_settings_or_exit()
    configure_logging(settings)
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # app.logs owns logging
        log_level=settings.log_level,
        access_log=level_of(settings) <= logging.DEBUG,
        timeout_graceful_shutdown=int(settings.stop_timeout),
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
