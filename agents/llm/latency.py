"""Latency distributions written as "MEDIAN[,P99]" milliseconds (log-normal between them)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True, slots=True)
class Latency:
    median_ms: float
    p99_ms: float

    @classmethod
    def parse(cls, text: str) -> Latency:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts or len(parts) > 2:
            raise ValueError(f"latency must be MEDIAN[,P99] in ms, got {text!r}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"latency must be MEDIAN[,P99] in ms, got {text!r}") from None
        median = values[0]
        p99 = values[1] if len(values) == 2 else median
        if median < 0 or p99 < median:
            raise ValueError(f"latency needs 0 <= MEDIAN <= P99, got {text!r}")
        return cls(median, p99)

    def sample_s(self, rng: random.Random) -> float:
        if self.median_ms <= 0:
            return 0.0
        if self.p99_ms <= self.median_ms:
            return self.median_ms / 1000
        sigma = math.log(self.p99_ms / self.median_ms) / _Z99
        return rng.lognormvariate(math.log(self.median_ms), sigma) / 1000

    def __str__(self) -> str:
        return f"{self.median_ms:g},{self.p99_ms:g}"
