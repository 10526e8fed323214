"""Whole-server numbers with several uvicorn workers.

Each worker publishes its monitor state (utils.monitor_state) to a folder shared by the workers
every PUBLISH_INTERVAL seconds; whichever worker answers /monitor or /metrics merges its own
live state with the others' latest. The other workers' part is at most PUBLISH_INTERVAL old;
files of processes that are gone are ignored and removed. `python -m app` empties the folder
before the workers start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from app.config import Settings
from utils.concurrency_monitor import ConcurrencyMonitor
from utils.monitor_state import State, merge_states

logger = logging.getLogger("app.workers")

PUBLISH_INTERVAL = 0.25


def board_dir(settings: Settings) -> Path:
    """A folder per proxy instance, beside its log: logs/.workers-<port>/."""
    return Path(settings.log_file).resolve().parent / f".workers-{settings.port}"


def reset_board(settings: Settings) -> None:
    """Empty the folder (at start, before the workers exist)."""
    folder = board_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerBoard:
    def __init__(self, folder: Path, monitor: ConcurrencyMonitor) -> None:
        self.folder = folder
        self.monitor = monitor
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own = folder / f"{monitor.pid}.json"

    def publish(self) -> None:
        temporary = self._own.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.monitor.export_state(max_system_age=1.0)))
        os.replace(temporary, self._own)  # readers never see half a file

    def others(self) -> list[State]:
        states = []
        for path in self.folder.glob("*.json"):
            if path == self._own or not path.stem.isdigit():
                continue
            if not _alive(int(path.stem)):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError, ValueError):
                states.append(json.loads(path.read_text()))
        return states

    def server_state(self) -> State:
        return merge_states([self.monitor.export_state(max_system_age=1.0), *self.others()])

    async def run(self) -> None:
        failing = False
        try:
            while True:
                try:
                    self.publish()
                    failing = False
                except Exception as exc:  # keep publishing; say so once per failure spell
                    if not failing:
                        logger.warning("cannot publish worker state to %s: %s", self.folder, exc)
                    failing = True
                await asyncio.sleep(PUBLISH_INTERVAL)
        finally:
            self._own.unlink(missing_ok=True)
