"""The reaper: no tick stays running past its lease, no queued tick waits on a paused stack."""

from __future__ import annotations

import logging

from orchestrator.store.abc import Store
from schema.clock import Clock

log = logging.getLogger("tickwork.reaper")


class Reaper:
    def __init__(self, store: Store, clock: Clock, max_attempts: int, every_s: float) -> None:
        self._store = store
        self._clock = clock
        self._max_attempts = max_attempts
        self._every_s = every_s

    async def reap_once(self) -> tuple[int, int, int]:
        requeued, failed, cancelled = await self._store.reap(self._clock.now(),
                                                             self._max_attempts)
        if requeued or failed or cancelled:
            log.info("reaped: %d requeued, %d failed, %d cancelled", requeued, failed, cancelled)
        return requeued, failed, cancelled

    async def run(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception as exc:
                log.warning("reap failed (%s); trying again", exc.__class__.__name__)
            await self._clock.sleep(self._every_s)
