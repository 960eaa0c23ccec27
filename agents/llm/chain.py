"""The chain factory: from TICKWORK_LLM_CHAIN and the provider keys to one composed LLM.

`build_chain("groq:llama-3.3-70b-versatile,openai:gpt-4o-mini", env, clock, options)` builds,
for every listed provider whose key is set, its authenticated client (providers.py), its
adapter, and the wrappers around it, and puts them in one FallbackLLM in the listed order.
Providers without a key are left out (`Chain.notes` says which); with no key at all the given
fallback (the simulated model) serves, and the label says so.

Per provider, from the outside in:

    BreakerLLM → RetryingLLM → RateLimitedLLM → adapter

- The breaker is outermost so that an open breaker skips at once, before any wait or budget;
  it judges whole calls (after their retries), and a per-attempt timeout, which happens inside
  the retry, reaches it as a Timeout like any other failure.
- The retry wraps the limiter so every real request, retries included, asks the limiter first
  and is counted in the budget; a skip by the limiter is not retryable, so a provider known to
  be exhausted hands over to the fallback at once instead of waiting.
- The adapter is innermost: one HTTP request, one attempt, and its headers feed the limiter.

Each chain entry (a provider's model) has its own breaker and limiter: providers such as Groq
set their limits per model.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agents.llm.adapter import ChatAdapter
from agents.llm.base import LLM
from agents.llm.breaker import Breaker, BreakerLLM, CircuitBreaker
from agents.llm.fallback import FallbackLLM
from agents.llm.groq_adapter import GroqLLM
from agents.llm.openai_adapter import OpenAILLM
from agents.llm.pricing import PriceLike, PriceTable
from agents.llm.providers import GroqProvider, OpenAIProvider, Provider
from agents.llm.ratelimit import Limiter, RateLimitedLLM, RateLimiter
from agents.llm.retry import RetryingLLM, RetryPolicy
from agents.llm.shared import SharedLimits
from schema.clock import Clock

CHAIN_VAR = "TICKWORK_LLM_CHAIN"
DEFAULT_CHAIN = "groq:llama-3.3-70b-versatile,openai:gpt-4o-mini"
NO_KEY_LABEL = "simulated (no provider key set)"


@dataclass(frozen=True, slots=True)
class ChainOptions:
    """How hard the chain tries, per provider. Groq's default limits are its published free
    tier for llama-3.3-70b-versatile; OpenAI has none unless configured (its headers and 429s
    still teach the limiter)."""

    attempt_timeout_s: float = 30.0
    connections: int = 1000  # each provider's connection pool: the calls that may be in flight
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    max_wait_s: float = 10.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    groq_rpm: int | None = 30
    groq_tpm: int | None = 12_000
    openai_rpm: int | None = None
    openai_tpm: int | None = None
    prices: Mapping[str, PriceLike] | None = None

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts,
                           attempt_timeout_s=self.attempt_timeout_s,
                           backoff_base_s=self.backoff_base_s, backoff_cap_s=self.backoff_cap_s,
                           max_wait_s=self.max_wait_s)

    def limits(self, provider: str) -> tuple[int | None, int | None]:
        """(requests, tokens) per minute configured for a provider."""
        if provider == "groq":
            return self.groq_rpm, self.groq_tpm
        if provider == "openai":
            return self.openai_rpm, self.openai_tpm
        return None, None


@dataclass(frozen=True, slots=True)
class _Kind:
    """What the chain knows about a provider name: how to build its client and adapter."""

    provider: Callable[..., Provider | None]  # from_env(env, timeout_s=..., connections=...)
    adapter: Callable[[Any, str, Clock, PriceTable], ChatAdapter]
    key_var: str
    default_model: str


KINDS: dict[str, _Kind] = {
    "groq": _Kind(GroqProvider.from_env, GroqLLM, GroqProvider.key_var,
                  "llama-3.3-70b-versatile"),
    "openai": _Kind(OpenAIProvider.from_env, OpenAILLM, OpenAIProvider.key_var, "gpt-4o-mini"),
}


def on_loopback(url: str) -> bool:
    """Whether `url` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """The (provider, model) entries of a spec such as "groq:llama-3.3-70b-versatile,openai:
    gpt-4o-mini", in order. A bare provider name means its default model. Raises ValueError
    saying what is wrong."""
    known = ", ".join(KINDS)
    entries: list[tuple[str, str]] = []
    for part in spec.split(","):
        item = part.strip()
        if not item:
            continue
        name, sep, model = item.partition(":")
        name, model = name.strip().lower(), model.strip()
        if name not in KINDS:
            raise ValueError(f"unknown provider {name!r} in {CHAIN_VAR}; known: {known}")
        if sep and not model:
            raise ValueError(f"no model after {name + ':'!r} in {CHAIN_VAR} (write "
                             f"{name}:MODEL, or {name} alone for {KINDS[name].default_model})")
        entry = (name, model or KINDS[name].default_model)
        if entry in entries:
            raise ValueError(f"{entry[0]}:{entry[1]} is listed twice in {CHAIN_VAR}")
        entries.append(entry)
    if not entries:
        raise ValueError(f"{CHAIN_VAR} lists no provider; write e.g. {DEFAULT_CHAIN!r}")
    return entries


@dataclass(frozen=True, slots=True)
class ChainProvider:
    """One entry of the chain, for health views: its breaker state and rate-limit headroom."""

    name: str
    model: str
    breaker: Breaker
    limiter: Limiter
    llm: LLM
    base_url: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}:{self.model}"

    @property
    def on_loopback(self) -> bool:
        """Its base URL is this machine: a local simulator (such as `tickwork sim-llm`), not
        the real provider."""
        return on_loopback(self.base_url)


@dataclass
class Chain:
    """The composed model (`llm`), how to announce it (`label`), its entries for health views
    (`providers`), what was left out and why (`notes`), and the providers whose SDK clients
    `aclose` closes (`clients`)."""

    llm: LLM
    label: str
    providers: list[ChainProvider] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    clients: list[Provider] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return self.llm.simulated

    @property
    def loopback_note(self) -> str | None:
        """A sentence saying which providers are served from this machine, if any."""
        local = [p for p in self.providers if p.on_loopback]
        if not local:
            return None
        where = ", ".join(f"{p.name} at {p.base_url}" for p in local)
        return (f"served on loopback ({where}): a local simulator such as `tickwork sim-llm`, "
                "not the real provider")

    async def aclose(self) -> None:
        """Close every provider's client (its connection pool)."""
        clients, self.clients = self.clients, []
        for client in clients:
            await client.aclose()
        closers, self.closers = self.closers, []
        for close in closers:
            await close()


def build_chain(spec: str, env: Mapping[str, str], clock: Clock, options: ChainOptions,
                *, fallback: LLM | None = None, rng: random.Random | None = None,
                shared: SharedLimits | None = None) -> Chain:
    """The composed chain for `spec` (TICKWORK_LLM_CHAIN; empty means the default). `env` holds
    the SDK variables (the composition root passes os.environ). `rng` draws the retry jitter.
    With `shared`, every provider's limiter and breaker live in Redis, shared by the fleet."""
    entries = parse_spec(spec or DEFAULT_CHAIN)
    prices = PriceTable(options.prices)
    policy = options.retry_policy
    rng = rng or random.Random()
    notes: list[str] = []
    built: dict[str, Provider | None] = {}
    members: list[ChainProvider] = []
    for name, model in entries:
        kind = KINDS[name]
        if name not in built:
            built[name] = kind.provider(env, timeout_s=options.attempt_timeout_s,
                                        connections=options.connections)
            if built[name] is None:
                notes.append(f"{name} left out: {kind.key_var} is not set")
        provider = built[name]
        if provider is None:
            continue
        if not prices.knows(model):
            notes.append(f"no price for {name}:{model}; its calls are recorded as costing 0")
        adapter = kind.adapter(provider.client, model, clock, prices)
        rpm, tpm = options.limits(name)
        limiter: Limiter = (shared.limiter(name, model, rpm, tpm) if shared is not None
                            else RateLimiter(rpm, tpm, clock))
        adapter.add_listener(limiter.observe_headers)
        breaker: Breaker = (
            shared.breaker(name, model, options.breaker_threshold, options.breaker_cooldown_s)
            if shared is not None else
            CircuitBreaker(options.breaker_threshold, options.breaker_cooldown_s, clock))
        llm = BreakerLLM(RetryingLLM(RateLimitedLLM(adapter, limiter, clock), policy, clock,
                                     random.Random(rng.random())), breaker, clock)
        members.append(ChainProvider(name, model, breaker, limiter, llm, provider.base_url))
    clients = [p for p in built.values() if p is not None]
    if members:
        composed = FallbackLLM(members[0].llm, *(m.llm for m in members[1:]))
        return Chain(composed, composed.label, members, notes, clients)
    if fallback is None:
        raise ValueError(f"no provider key is set for {CHAIN_VAR}={spec or DEFAULT_CHAIN!r} "
                         "and no fallback model was given")
    return Chain(fallback, NO_KEY_LABEL, [], notes, clients)
