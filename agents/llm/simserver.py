"""The sim-llm server: an OpenAI- and Groq-compatible chat API that answers like the simulated
model, for driving the real SDKs in integration and load tests without keys or internet.

Routes (OpenAI's SDK posts to BASE/chat/completions with BASE ending in /v1; Groq's posts to
BASE/openai/v1/chat/completions), so point the SDKs at it with

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1    GROQ_BASE_URL=http://127.0.0.1:PORT

    POST /v1/chat/completions          as OpenAI      GET /v1/models
    POST /openai/v1/chat/completions   as Groq        GET /openai/v1/models
    GET  /_sim/config   POST /_sim/config (a partial update, applied to the next request)
    GET  /_sim/stats    POST /_sim/reset  (clears the stats and the rate-limit windows)

Answers are deterministic: the content depends only on the seed and the messages, so the same
prompt gets the same answer from either provider. What varies from request to request (the
latency drawn, whether a fault is injected) comes from one seeded stream, so a run with the same
seed and the same request order behaves the same. Everything it says is marked as simulated.
Time (latency, hangs, rate windows) is spent and measured on the injected Clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.llm.sim import count_tokens
from agents.llm.simbodies import (
    MODELS,
    completion_body,
    config_error,
    error_response,
    json_response,
    models_body,
    request_id,
)
from agents.llm.simgen import generate, rng_for
from agents.llm.simknobs import PROVIDERS, Provider, SimConfig, describe_errors
from agents.llm.simwindow import SlidingWindow, retry_after_headers
from schema.clock import Clock, SystemClock

SCHEMA_MARKER = "It must satisfy this JSON schema:"
OUTCOMES = ("ok", "rate_limited", "server_error", "hung", "down", "bad_request")
# The answer for a JSON request that names no schema: an object with one text field.
_ANY_JSON: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}}}
_SCHEMA_CACHE_SIZE = 256
_REPLIES = ["Here is a short answer.", "Noted; a brief reply follows.",
            "A plain-text answer, as asked.", "Understood."]


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class BadRequest(ValueError):
    """A request the real API would refuse with 400; the message says which field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SimServer:
    """The state behind the app: the knobs, the rate windows, the stats, the seeded streams.

    Reachable as `app.state.sim`; `config` may be replaced at any time (it is frozen) and the
    next request follows it.
    """

    def __init__(self, config: SimConfig, clock: Clock, seed: int) -> None:
        self.config = config
        self.clock = clock
        self.seed = seed
        self.windows = {p: SlidingWindow() for p in PROVIDERS}
        self.stats: dict[Provider, Counter[str]] = {p: Counter() for p in PROVIDERS}
        self._draws = rng_for(seed, "faults")
        self._schemas: dict[str, tuple[str, dict[str, Any] | None]] = {}

    def reset(self) -> None:
        """Clear the stats and the rate windows, and restart the seeded stream of draws."""
        for provider in PROVIDERS:
            self.windows[provider].clear()
            self.stats[provider].clear()
        self._draws = rng_for(self.seed, "faults")

    def stats_json(self) -> dict[str, Any]:
        return {p: {"requests": sum(self.stats[p].values()),
                    **{o: self.stats[p][o] for o in OUTCOMES}} for p in PROVIDERS}

    # -- what a request asks for ----------------------------------------------------------

    def _embedded_schema(self, text: str) -> tuple[str, dict[str, Any] | None]:
        """The (title, schema) after the schema marker in a system prompt, parsed once."""
        found = self._schemas.get(text)
        if found is None:
            try:
                schema, _ = json.JSONDecoder().raw_decode(text.strip())
            except ValueError:
                schema = None
            if not isinstance(schema, dict):
                found = ("", None)
            else:
                found = (str(schema.get("title", "")), schema)
            if len(self._schemas) >= _SCHEMA_CACHE_SIZE:
                self._schemas.clear()
            self._schemas[text] = found
        return found

    def _wanted_json(self, body: dict[str, Any], messages: list[dict[str, str]]
                     ) -> tuple[str, dict[str, Any]] | None:
        """(schema name, schema) when the request asks for JSON, else None (plain text)."""
        wants_json = False
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
                spec = fmt["json_schema"]
                schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else None
                name = str((schema or {}).get("title") or spec.get("name") or "")
                return name, schema or _ANY_JSON
            wants_json = fmt.get("type") == "json_object"
        for message in messages:
            if message["role"] != "system":
                continue
            at = message["content"].find(SCHEMA_MARKER)
            if at >= 0:
                name, schema = self._embedded_schema(message["content"][at + len(SCHEMA_MARKER):])
                if schema is not None:
                    return name, schema
                wants_json = True
        return ("", _ANY_JSON) if wants_json else None

    def answer(self, body: dict[str, Any], messages: list[dict[str, str]]) -> str:
        """The reply's content: the same for the same seed and messages."""
        digest = hashlib.blake2b(orjson.dumps(messages), digest_size=12).hexdigest()
        rng = rng_for(self.seed, digest)
        wanted = self._wanted_json(body, messages)
        if wanted is not None:
            name, schema = wanted
            return orjson.dumps(generate(name, schema, messages, rng)).decode()
        asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        asked = " ".join(asked.split())
        asked = asked if len(asked) <= 80 else asked[:79].rstrip() + "…"
        return f"[simulated] {rng.choice(_REPLIES)} You asked: {asked!r}"

    # -- the chat endpoint ----------------------------------------------------------------

    async def chat(self, provider: Provider, request: Request) -> Response:
        """One chat completion as `provider`, under its current knobs."""
        knobs = self.config.knobs(provider)
        window = self.windows[provider]
        stats = self.stats[provider]

        def refuse(outcome: str | None, status: int, message: str, kind: str,
                   code: str | None = None, *, param: str | None = None,
                   retry_after_s: float | None = None) -> Response:
            if outcome is not None:
                stats[outcome] += 1
            headers = window.headers(self.clock.now(), knobs.rpm, knobs.tpm)
            if retry_after_s is not None:
                headers.update(retry_after_headers(retry_after_s))
            return error_response(provider, status, f"{message} (simulated)", kind, code,
                                  headers, param=param)

        if knobs.down:
            return refuse("down", 503, "Service Unavailable", "service_unavailable")
        try:
            body, messages, model = _parse(await request.body())
        except BadRequest as exc:
            return refuse("bad_request", 400, str(exc), "invalid_request_error",
                          param=exc.param)

        text = self.answer(body, messages)
        prompt_tokens = (knobs.prompt_tokens if knobs.prompt_tokens is not None
                         else count_tokens("".join(m["content"] for m in messages)))
        completion_tokens = (knobs.completion_tokens if knobs.completion_tokens is not None
                             else count_tokens(text))
        tokens = prompt_tokens + completion_tokens
        if knobs.tpm is not None and tokens > knobs.tpm:
            return refuse("bad_request", 413, f"Request too large for model `{model}` on "
                          f"tokens per minute (TPM): Limit {knobs.tpm}, Requested {tokens}",
                          "tokens", "rate_limit_exceeded")
        now = self.clock.now()
        over = window.check(now, tokens, knobs.rpm, knobs.tpm)
        if over is not None:
            unit = "requests" if over.limit == "requests" else "tokens"
            return refuse("rate_limited", 429, f"Rate limit reached for model `{model}` on "
                          f"{unit} per minute: Limit {over.allowed}, Used {over.used}, "
                          f"Requested {over.requested}. Please try again in "
                          f"{over.retry_after_s:.3f}s.", unit, "rate_limit_exceeded",
                          retry_after_s=over.retry_after_s)

        draw = self._draws.random()
        latency_s = knobs.latency.sample_s(self._draws)
        if draw < knobs.rate_limit_rate:
            return refuse("rate_limited", 429, f"Rate limit reached for model `{model}`. "
                          f"Please try again in {knobs.retry_after_s:g}s.", "requests",
                          "rate_limit_exceeded", retry_after_s=knobs.retry_after_s)
        window.admit(now, tokens)
        draw -= knobs.rate_limit_rate
        if draw < knobs.error_rate:
            await self.clock.sleep(latency_s)
            return refuse("server_error", 500, "The server had an error while processing "
                          "your request.", "server_error")
        if draw - knobs.error_rate < knobs.hang_rate:
            stats["hung"] += 1  # counted now, so the stats show it while it hangs
            await self._hang(request, knobs.hang_s)
            return refuse(None, 504, f"No answer within {knobs.hang_s:g} s (a hang)",
                          "server_error")

        await self.clock.sleep(latency_s)
        stats["ok"] += 1
        data = completion_body(provider, model, text, prompt_tokens, completion_tokens,
                               int(self.clock.now()), latency_s)
        headers = window.headers(self.clock.now(), knobs.rpm, knobs.tpm)
        headers["x-request-id"] = request_id()
        return json_response(data, 200, headers)

    async def _hang(self, request: Request, seconds: float) -> None:
        """Hold the request until `seconds` pass on the clock or the client goes away."""
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({timer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            gone.cancel()
            await asyncio.gather(timer, gone, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _parse(raw: bytes) -> tuple[dict[str, Any], list[dict[str, str]], str]:
    """(body, messages as role/content strings, model) of a chat request, or BadRequest."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    messages = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"'messages.{i}' must be an object with a 'role'", f"messages.{i}")
        messages.append({"role": message["role"],
                         "content": _content_text(message.get("content"))})
    if body.get("stream"):
        raise BadRequest("streaming is not supported by the simulated model", "stream")
    return body, messages, model


def create_sim_app(config: SimConfig | None = None, *, clock: Clock | None = None,
                   seed: int = 0) -> Starlette:
    """The simulated OpenAI/Groq API as an ASGI app; its state is `app.state.sim`."""
    sim = SimServer(config or SimConfig(), clock or SystemClock(), seed)

    def chat(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await sim.chat(provider, request)
        return endpoint

    def models(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return json_response(models_body(provider, int(sim.clock.now())))
        return endpoint

    async def index(request: Request) -> Response:
        return json_response({"service": "tickwork sim-llm", "simulated": True,
                      "openai_base_path": "/v1", "groq_base_path": "/",
                      "knobs": "/_sim/config", "stats": "/_sim/stats"})

    async def get_config(request: Request) -> Response:
        return json_response(sim.config.model_dump())

    async def set_config(request: Request) -> Response:
        try:
            patch = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return config_error("the body must be JSON: an object of knobs")
        if not isinstance(patch, dict):
            return config_error("the body must be a JSON object of knobs")
        try:
            sim.config = sim.config.updated(patch)
        except ValidationError as exc:
            return config_error(describe_errors(exc))
        return json_response(sim.config.model_dump())

    async def stats(request: Request) -> Response:
        return json_response(sim.stats_json())

    async def reset(request: Request) -> Response:
        sim.reset()
        return json_response(sim.stats_json())

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/chat/completions", chat("openai"), methods=["POST"]),
        Route("/openai/v1/chat/completions", chat("groq"), methods=["POST"]),
        Route("/v1/models", models("openai"), methods=["GET"]),
        Route("/openai/v1/models", models("groq"), methods=["GET"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", set_config, methods=["POST"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.sim = sim
    return app


__all__ = ["MODELS", "SimConfig", "SimServer", "create_sim_app"]
