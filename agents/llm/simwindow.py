"""The sim-llm server's rate limits: a sliding one-minute window per provider, and the
x-ratelimit-* headers that report it the way Groq and OpenAI do.

The window remembers when each admitted request arrived and how many tokens it used, on the
injected clock. A request is over a limit when admitting it would put more than `rpm` requests
or `tpm` tokens in the last minute; it may retry once enough of the oldest entries have left
the window (that wait is its retry-after). A provider without a configured limit still reports
headers, against a nominal limit no simulated load reaches, so clients can always parse them.

Header meanings follow the providers' documentation: `remaining` is what is left in the window
now; `reset` is the time until the window is empty again (back to its initial state). Durations
are written as the providers write them: "120ms", "7.66s", "2m59.56s".
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

WINDOW_S = 60.0
NOMINAL_RPM = 1_000_000  # what an unlimited provider reports as its limit
NOMINAL_TPM = 1_000_000_000

Limit = Literal["requests", "tokens"]


def fmt_duration(seconds: float) -> str:
    """A duration the way the providers' rate-limit headers write it (Go's style)."""
    if seconds <= 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis < 1000:
        return f"{max(1, millis)}ms"
    centis = round(seconds * 100)
    hours, rest = divmod(centis, 360_000)
    minutes, rest = divmod(rest, 6_000)
    secs = f"{rest // 100}.{rest % 100:02d}".rstrip("0").rstrip(".")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{secs}s"


@dataclass(frozen=True, slots=True)
class OverLimit:
    """Why a request does not fit in the window, and how long until it would."""

    limit: Limit
    allowed: int
    used: int
    requested: int
    retry_after_s: float


class SlidingWindow:
    """The requests one provider admitted in the last minute."""

    def __init__(self) -> None:
        self._entries: deque[tuple[float, int]] = deque()  # (admitted at, tokens), in order
        self._tokens = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0][0] + WINDOW_S <= now:
            self._tokens -= entries.popleft()[1]

    def requests(self, now: float) -> int:
        self._expire(now)
        return len(self._entries)

    def tokens(self, now: float) -> int:
        self._expire(now)
        return self._tokens

    def check(self, now: float, tokens: int, rpm: int | None,
              tpm: int | None) -> OverLimit | None:
        """None if a request of `tokens` fits under the limits now, else why it does not.
        A request larger than `tpm` on its own never fits; the caller says so instead."""
        self._expire(now)
        entries = self._entries
        if rpm is not None and len(entries) >= rpm:
            # Room appears when all but rpm - 1 of the entries have left the window.
            frees_at = entries[len(entries) - rpm][0] + WINDOW_S
            return OverLimit("requests", rpm, len(entries), 1, frees_at - now)
        if tpm is not None and self._tokens + tokens > tpm:
            excess, freed = self._tokens + tokens - tpm, 0
            frees_at = now + WINDOW_S
            for admitted_at, used in entries:
                freed += used
                if freed >= excess:
                    frees_at = admitted_at + WINDOW_S
                    break
            return OverLimit("tokens", tpm, self._tokens, tokens, frees_at - now)
        return None

    def admit(self, now: float, tokens: int) -> None:
        self._expire(now)
        self._entries.append((now, tokens))
        self._tokens += tokens

    def reset_s(self, now: float) -> float:
        """Seconds until the window is empty again."""
        self._expire(now)
        return self._entries[-1][0] + WINDOW_S - now if self._entries else 0.0

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def headers(self, now: float, rpm: int | None, tpm: int | None) -> dict[str, str]:
        """The x-ratelimit-* headers for a response sent now."""
        limit_requests = rpm if rpm is not None else NOMINAL_RPM
        limit_tokens = tpm if tpm is not None else NOMINAL_TPM
        reset = fmt_duration(self.reset_s(now))
        return {
            "x-ratelimit-limit-requests": str(limit_requests),
            "x-ratelimit-limit-tokens": str(limit_tokens),
            "x-ratelimit-remaining-requests": str(max(0, limit_requests - len(self._entries))),
            "x-ratelimit-remaining-tokens": str(max(0, limit_tokens - self._tokens)),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-reset-tokens": reset,
        }


def retry_after_headers(seconds: float) -> dict[str, str]:
    """retry-after in whole seconds (rounded up, as HTTP wants), and to the millisecond in
    retry-after-ms, which both SDKs prefer when present."""
    seconds = max(0.0, seconds)
    return {"retry-after": str(math.ceil(seconds - 1e-9)),
            "retry-after-ms": str(math.ceil(seconds * 1000 - 1e-6))}
