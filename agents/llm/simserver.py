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

`SimServer` decides every answer synchronously, on arrival (`handle`): either a `Reply` to send
at once, or a `Pending` one to finish (`finish`) after a wait on the clock. Two front ends serve
it: `create_sim_app`, an ASGI app (tests, and embedding in another server), and
`agents.llm.simhttp`, the lean HTTP/1.1 server `tickwork sim-llm` runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
from pydantic import ValidationError

from agents.llm.sim import count_tokens
from agents.llm.simbodies import (
    MODELS,
    Reply,
    completion_body,
    config_error,
    error_response,
    json_response,
    models_body,
    request_id,
)
from agents.llm.simgen import generate, rng_for
from agents.llm.simknobs import PROVIDERS, Provider, ProviderKnobs, SimConfig, describe_errors
from agents.llm.simwindow import SlidingWindow, retry_after_headers
from schema.clock import Clock, SystemClock

SCHEMA_MARKER = "It must satisfy this JSON schema:"
OUTCOMES = ("ok", "rate_limited", "server_error", "hung", "down", "bad_request")
# The answer for a JSON request that names no schema: an object with one text field.
_ANY_JSON: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}}}
_SCHEMA_CACHE_SIZE = 256
_REPLIES = ["Here is a short answer.", "Noted; a brief reply follows.",
            "A plain-text answer, as asked.", "Understood."]
CHAT_PATHS: dict[str, Provider] = {"/v1/chat/completions": "openai",
                                   "/openai/v1/chat/completions": "groq"}
MODEL_PATHS: dict[str, Provider] = {"/v1/models": "openai", "/openai/v1/models": "groq"}


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


@dataclass(slots=True)
class Pending:
    """A chat answer decided on arrival, sent after `seconds` on the clock: "ok", a 5xx
    ("server_error") or, for a hang ("hung"), a 504 unless the client leaves first."""

    seconds: float
    outcome: str
    provider: Provider
    knobs: ProviderKnobs
    model: str = ""
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
        self._routes: dict[str, dict[str, Callable[[bytes], Reply | Pending]]] = {
            "/": {"GET": lambda _: json_response({
                "service": "tickwork sim-llm", "simulated": True, "openai_base_path": "/v1",
                "groq_base_path": "/", "knobs": "/_sim/config", "stats": "/_sim/stats"})},
            "/_sim/config": {"GET": lambda _: json_response(self.config.model_dump()),
                             "POST": self._set_config},
            "/_sim/stats": {"GET": lambda _: json_response(self.stats_json())},
            "/_sim/reset": {"POST": self._reset},
        }
        for path, provider in CHAT_PATHS.items():
            self._routes[path] = {"POST": self._chat_route(provider)}
        for path, provider in MODEL_PATHS.items():
            self._routes[path] = {"GET": self._models_route(provider)}

    def reset(self) -> None:
        """Clear the stats and the rate windows, and restart the seeded stream of draws."""
        for provider in PROVIDERS:
            self.windows[provider].clear()
            self.stats[provider].clear()
        self._draws = rng_for(self.seed, "faults")

    def stats_json(self) -> dict[str, Any]:
        return {p: {"requests": sum(self.stats[p].values()),
                    **{o: self.stats[p][o] for o in OUTCOMES}} for p in PROVIDERS}

    # -- routing --------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> Reply | Pending:
        """The answer to one request: a Reply now, or a Pending one to `finish` later."""
        methods = self._routes.get(path)
        if methods is None and len(path) > 1 and path.endswith("/"):
            methods = self._routes.get(path.rstrip("/"))
        if methods is None:
            return _not_found(404, f"Invalid URL ({method} {path}) (simulated)")
        route = methods.get("GET" if method == "HEAD" else method)
        if route is None:
            reply = _not_found(405, f"Method {method} not allowed on {path} (simulated)")
            reply.headers["allow"] = ", ".join(methods)
            return reply
        return route(body)

    def _chat_route(self, provider: Provider) -> Callable[[bytes], Reply | Pending]:
        return lambda body: self.chat(provider, body)

    def _models_route(self, provider: Provider) -> Callable[[bytes], Reply]:
        return lambda _: json_response(models_body(provider, int(self.clock.now())))

    def _set_config(self, body: bytes) -> Reply:
        try:
            patch = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return config_error("the body must be JSON: an object of knobs")
        if not isinstance(patch, dict):
            return config_error("the body must be a JSON object of knobs")
        try:
            self.config = self.config.updated(patch)
        except ValidationError as exc:
            return config_error(describe_errors(exc))
        return json_response(self.config.model_dump())

    def _reset(self, _: bytes) -> Reply:
        self.reset()
        return json_response(self.stats_json())

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

    def _refuse(self, provider: Provider, knobs: ProviderKnobs, outcome: str | None,
                status: int, message: str, kind: str, code: str | None = None, *,
                param: str | None = None, retry_after_s: float | None = None) -> Reply:
        if outcome is not None:
            self.stats[provider][outcome] += 1
        headers = self.windows[provider].headers(self.clock.now(), knobs.rpm, knobs.tpm)
        if retry_after_s is not None:
            headers.update(retry_after_headers(retry_after_s))
        return error_response(provider, status, f"{message} (simulated)", kind, code, headers,
                              param=param)

    def chat(self, provider: Provider, raw: bytes) -> Reply | Pending:
        """One chat completion as `provider`, under its current knobs, decided now."""
        knobs = self.config.knobs(provider)
        window = self.windows[provider]
        if knobs.down:
            return self._refuse(provider, knobs, "down", 503, "Service Unavailable",
                                "service_unavailable")
        try:
            body, messages, model = _parse(raw)
        except BadRequest as exc:
            return self._refuse(provider, knobs, "bad_request", 400, str(exc),
                                "invalid_request_error", param=exc.param)

        text = self.answer(body, messages)
        prompt_tokens = (knobs.prompt_tokens if knobs.prompt_tokens is not None
                         else count_tokens("".join(m["content"] for m in messages)))
        completion_tokens = (knobs.completion_tokens if knobs.completion_tokens is not None
                             else count_tokens(text))
        tokens = prompt_tokens + completion_tokens
        if knobs.tpm is not None and tokens > knobs.tpm:
            return self._refuse(provider, knobs, "bad_request", 413, "Request too large for "
                                f"model `{model}` on tokens per minute (TPM): Limit "
                                f"{knobs.tpm}, Requested {tokens}", "tokens",
                                "rate_limit_exceeded")
        now = self.clock.now()
        over = window.check(now, tokens, knobs.rpm, knobs.tpm)
        if over is not None:
            unit = "requests" if over.limit == "requests" else "tokens"
            return self._refuse(provider, knobs, "rate_limited", 429, "Rate limit reached for "
                                f"model `{model}` on {unit} per minute: Limit {over.allowed}, "
                                f"Used {over.used}, Requested {over.requested}. Please try "
                                f"again in {over.retry_after_s:.3f}s.", unit,
                                "rate_limit_exceeded", retry_after_s=over.retry_after_s)

        draw = self._draws.random()
        latency_s = knobs.latency.sample_s(self._draws)
        if draw < knobs.rate_limit_rate:
            return self._refuse(provider, knobs, "rate_limited", 429, "Rate limit reached for "
                                f"model `{model}`. Please try again in "
                                f"{knobs.retry_after_s:g}s.", "requests", "rate_limit_exceeded",
                                retry_after_s=knobs.retry_after_s)
        window.admit(now, tokens)
        draw -= knobs.rate_limit_rate
        if draw < knobs.error_rate:
            return Pending(latency_s, "server_error", provider, knobs)
        if draw - knobs.error_rate < knobs.hang_rate:
            self.stats[provider]["hung"] += 1  # counted now, so the stats show it while it hangs
            return Pending(knobs.hang_s, "hung", provider, knobs)
        return Pending(latency_s, "ok", provider, knobs, model, text, prompt_tokens,
                       completion_tokens)

    def finish(self, pending: Pending) -> Reply:
        """The reply to a Pending answer once its time on the clock has passed."""
        provider, knobs = pending.provider, pending.knobs
        if pending.outcome == "server_error":
            return self._refuse(provider, knobs, "server_error", 500, "The server had an error "
                                "while processing your request.", "server_error")
        if pending.outcome == "hung":
            return self._refuse(provider, knobs, None, 504, f"No answer within "
                                f"{knobs.hang_s:g} s (a hang)", "server_error")
        self.stats[provider]["ok"] += 1
        now = self.clock.now()
        data = completion_body(provider, pending.model, pending.text, pending.prompt_tokens,
                               pending.completion_tokens, int(now), pending.seconds)
        headers = self.windows[provider].headers(now, knobs.rpm, knobs.tpm)
        headers["x-request-id"] = request_id()
        return json_response(data, 200, headers)


def _not_found(status: int, message: str) -> Reply:
    return json_response({"error": {"message": message, "type": "invalid_request_error",
                                    "code": "unknown_url"}}, status)


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


# -- the ASGI front end -------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class SimApp:
    """The simulated API as a plain ASGI app (HTTP and lifespan); its state is `state.sim`."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.state = SimpleNamespace(sim=sim)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        result = self.sim.handle(scope["method"], scope["path"], body)
        if isinstance(result, Pending):
            if result.outcome == "hung":
                await self._hang(receive, result.seconds)
            else:
                await self.sim.clock.sleep(result.seconds)
            result = self.sim.finish(result)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(result.body)).encode()),
                   *((k.encode(), v.encode()) for k, v in result.headers.items())]
        await send({"type": "http.response.start", "status": result.status,
                    "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else result.body})

    async def _hang(self, receive: Receive, seconds: float) -> None:
        """Hold the request until `seconds` pass on the clock or the client goes away."""
        timer = asyncio.ensure_future(self.sim.clock.sleep(seconds))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({timer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            gone.cancel()
            await asyncio.gather(timer, gone, return_exceptions=True)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_sim_app(config: SimConfig | None = None, *, clock: Clock | None = None,
                   seed: int = 0) -> SimApp:
    """The simulated OpenAI/Groq API as an ASGI app; its state is `app.state.sim`."""
    return SimApp(SimServer(config or SimConfig(), clock or SystemClock(), seed))


__all__ = ["MODELS", "Pending", "Reply", "SimApp", "SimConfig", "SimServer", "create_sim_app"]
