"""Fallback: several models in order, itself one model.

`FallbackLLM(primary, *fallbacks)` asks each member in turn and passes along on any provider
failure (retries and skips already happened inside the member). The first answer wins and
carries every attempt made before it, so a trace shows the whole path; when every member fails
it raises one `LLMError` with all of them.
"""

from __future__ import annotations

from agents.llm.base import LLM, Attempt, LLMError, LLMRequest, LLMResponse, ProviderError


class FallbackLLM:
    def __init__(self, primary: LLM, *fallbacks: LLM) -> None:
        self.members: tuple[LLM, ...] = (primary, *fallbacks)

    @property
    def label(self) -> str:
        """E.g. "groq:llama-3.3-70b-versatile → openai:gpt-4o-mini"."""
        return " → ".join(m.label for m in self.members)

    @property
    def simulated(self) -> bool:
        return all(m.simulated for m in self.members)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        attempts: list[Attempt] = []
        failures: list[str] = []
        for member in self.members:
            try:
                response = await member.complete(request)
            except (ProviderError, LLMError) as exc:
                attempts += exc.attempts
                failures.append(f"{member.label}: {exc}")
                continue
            response.attempts = attempts + response.attempts
            return response
        raise LLMError("every model failed — " + "; ".join(failures), attempts)
