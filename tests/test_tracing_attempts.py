"""What a trace says of each LLM answer comes from the answer: the adapters read the
completion's id, model and finish reasons (through the real SDKs, on their mock transports);
the simulated model makes up its own and says so."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from tests.llm_fakes import SteppingClock, request
from tests.test_llm_adapter import adapter_for


def _completion(**extra: Any) -> bytes:
    body: dict[str, Any] = {
        "object": "chat.completion", "created": 1,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    for key, value in extra.items():
        if key == "finish_reason":
            body["choices"][0]["finish_reason"] = value
        else:
            body[key] = value
    return orjson.dumps(body)


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_an_attempt_keeps_what_the_completion_says_of_itself(sdk: str) -> None:
    clock = SteppingClock()
    body = _completion(id="chatcmpl-42", model="gpt-4o-mini-2024-07-18", finish_reason="length")
    llm = adapter_for(sdk, lambda: (200, {}, body), clock)
    (attempt,) = asyncio.run(llm.complete(request())).attempts
    assert attempt.status == "ok"
    assert (attempt.response_id, attempt.response_model, attempt.finish_reasons) == (
        "chatcmpl-42", "gpt-4o-mini-2024-07-18", ("length",))


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_a_completion_that_leaves_them_out_still_answers(sdk: str) -> None:
    clock = SteppingClock()
    body = _completion(id=7, finish_reason=None)  # an id of the wrong type, no reason
    llm = adapter_for(sdk, lambda: (200, {}, body), clock)
    (attempt,) = asyncio.run(llm.complete(request())).attempts
    assert attempt.status == "ok" and attempt.output_tokens == 2
    assert (attempt.response_id, attempt.response_model, attempt.finish_reasons) == (
        None, None, None)


def test_the_simulated_model_labels_its_made_up_response() -> None:
    clock = SteppingClock()
    sim = SimulatedLLM(clock, Latency(0, 0), seed=1)
    first = asyncio.run(sim.complete(request())).attempts[0]
    again = asyncio.run(SimulatedLLM(clock, Latency(0, 0), seed=1).complete(request()))
    assert first.response_id is not None and first.response_id.startswith("simulated-")
    assert first.response_id == again.attempts[0].response_id  # seeded, reproducible
    assert (first.response_model, first.finish_reasons) == ("simulated", ("stop",))
