"""What the sim-llm server sends: Groq's and OpenAI's JSON shapes for completions, model lists
and errors, close enough that each provider's official SDK parses them as it parses the real
ones (and raises its own exception for each error status).

Every body is marked as simulated: the system fingerprint, the models' owner, and the text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.llm.simknobs import Provider

MODELS: dict[Provider, tuple[str, ...]] = {
    "groq": ("llama-3.3-70b-versatile", "llama-3.1-8b-instant"),
    "openai": ("gpt-4o-mini", "gpt-4o"),
}
OWNER = "tickwork-simulated"
FINGERPRINT = "fp_simulated"
# Ids only need to differ; a generator of its own (not the seeded streams) is cheaper than uuid4.
_ids = random.Random()


@dataclass(slots=True)
class Reply:
    """A response to send: status, JSON body, headers besides content-type and -length."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(data), {} if headers is None else headers)


def request_id() -> str:
    return f"req_{_ids.getrandbits(104):026x}"


def error_response(provider: Provider, status: int, message: str, kind: str,
                   code: str | None, headers: dict[str, str], *,
                   param: str | None = None) -> Reply:
    """{"error": {"message", "type", "code"}} (OpenAI's also has "param"), with `status`."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if provider == "openai" or param is not None:
        error["param"] = param
    headers["x-request-id"] = request_id()
    return json_response({"error": error}, status, headers)


def config_error(message: str) -> Reply:
    """A rejected knob change (422), in the same error shape."""
    return json_response({"error": {"message": message, "type": "invalid_request_error",
                                    "code": "invalid_config"}}, 422)


def completion_body(provider: Provider, model: str, text: str, prompt_tokens: int,
                    completion_tokens: int, created: int, latency_s: float) -> dict[str, Any]:
    """A `chat.completion` with one choice; Groq's adds `x_groq` and timings in `usage`."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                             "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    data: dict[str, Any] = {
        "id": f"chatcmpl-{_ids.getrandbits(128):032x}", "object": "chat.completion",
        "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage, "system_fingerprint": FINGERPRINT,
    }
    if provider == "groq":
        # A tenth of the time queued; the rest split between prompt and completion by tokens.
        queue_s, work_s = latency_s * 0.1, latency_s * 0.9
        prompt_s = work_s * prompt_tokens / max(1, prompt_tokens + completion_tokens)
        usage.update(queue_time=round(queue_s, 6), prompt_time=round(prompt_s, 6),
                     completion_time=round(work_s - prompt_s, 6), total_time=round(work_s, 6))
        data["x_groq"] = {"id": request_id()}
        data["service_tier"] = "on_demand"
    else:
        message.update(refusal=None, annotations=[])
        usage.update(prompt_tokens_details={"cached_tokens": 0, "audio_tokens": 0},
                     completion_tokens_details={"reasoning_tokens": 0, "audio_tokens": 0})
        data["service_tier"] = "default"
    return data


def models_body(provider: Provider, created: int) -> dict[str, Any]:
    """The provider's model list (any other model name is accepted too)."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": OWNER}
        for name in MODELS[provider]]}
