"""The reaper: no tick stays running past its lease, no queued tick waits on a paused stack."""

from __future__ import annotations

import logging

from orchestrator import queue
from schema.clock import Clock
from schema.db import Database

log = logging.getLogger("tickwork.reaper")


class Reaper:
    def __init__(self, db: Database, clock: Clock, max_attempts: int, every_s: float) -> None:
        self._db = db
        self._clock = clock
        self._max_attempts = max_attempts
        self._every_s = every_s

    async def reap_once(self) -> tuple[int, int, int]:
        requeued, failed, cancelled = await self._db.transact(
            queue.reap, self._clock.now(), self._max_attempts)
        if requeued or failed or cancelled:
            log.info("reaped: %d requeued, %d failed, %d cancelled", requeued, failed, cancelled)
        return requeued, failed, cancelled

    async def run(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reap failed; trying again")
            await self._clock.sleep(self._every_s)
