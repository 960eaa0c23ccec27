"""The built-in simulated model: deterministic, seeded, and labelled as simulated.

Each answer is seeded by the request's seed ("stack:slot:agent") and how many times that seed
has been asked, so a run is reproducible and a repair prompt gets a fresh draw. Latency follows
the configured distribution on the injected Clock. Its response ids ("simulated-…") and model
("simulated") are synthetic and say so.
"""

from __future__ import annotations

import orjson

from agents.llm.base import Attempt, LLMRequest, LLMResponse
from agents.llm.latency import Latency
from agents.llm.simgen import generate, rng_for
from schema.clock import Clock

PROVIDER = "sim"
MODEL = "simulated"


def count_tokens(text: str) -> int:
    """A rough count (4 characters a token), the same one the sim-llm server reports."""
    return max(1, len(text) // 4)


class SimulatedLLM:
    def __init__(self, clock: Clock, latency: Latency, seed: int = 0) -> None:
        self._clock = clock
        self._latency = latency
        self._seed = seed

    @property
    def label(self) -> str:
        return f"{PROVIDER}:{MODEL} (simulated, latency {self._latency} ms)"

    @property
    def simulated(self) -> bool:
        return True

    async def complete(self, request: LLMRequest) -> LLMResponse:
        rng = rng_for(self._seed, request.seed, len(request.messages))
        started = self._clock.monotonic()
        started_at = self._clock.now()
        await self._clock.sleep(self._latency.sample_s(rng))
        answer = generate(request.schema_name, request.output_schema, request.messages, rng)
        text = orjson.dumps(answer).decode()
        prompt_text = "".join(m.get("content", "") for m in request.messages)
        attempt = Attempt(
            provider=PROVIDER,
            model=MODEL,
            status="ok",
            latency_ms=(self._clock.monotonic() - started) * 1000,
            started_at=started_at,
            input_tokens=count_tokens(prompt_text),
            output_tokens=count_tokens(text),
            # Synthetic, and saying so: no provider made up this id.
            response_id=f"simulated-{rng.getrandbits(64):016x}",
            response_model=MODEL,
            finish_reasons=("stop",),
        )
        return LLMResponse(text=text, provider=PROVIDER, model=MODEL, attempts=[attempt])
