"""Settings: one frozen object, read from the environment (and `.env`) and handed down."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agents.llm.chain import parse_spec
from agents.llm.latency import Latency
from agents.llm.pricing import PriceLike, PriceTable
from schema.db import normalise_url

_AGENT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
PRICES_EXAMPLE = '{"gpt-4o-mini": [0.15, 0.6]}'


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TICKWORK_", env_file=".env", extra="ignore", frozen=True,
        allow_inf_nan=False,
    )

    database_url: str = "sqlite:///tickwork.db"
    redis_url: str | None = None
    redis_prefix: str = Field(default="tickwork:", min_length=1, max_length=64,
                              description="the prefix of every Redis key and channel")
    public_url: str | None = Field(default=None, description="the dashboard's address as its "
                                   "users reach it; https: the session cookie is Secure")
    tick_interval: int = Field(default=10, ge=1, le=86_400, description="the beat, seconds")
    lease_s: float = Field(default=30.0, gt=0, le=3600, description="a claimed tick's lease")
    max_concurrent_ticks: int = Field(default=1000, ge=1, le=100_000)
    tick_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100,
                              description="tries per tick before it fails")
    sim_latency_ms: str = "150,400"
    sim_seed: int = 0
    admin_token: SecretStr | None = None
    agents: str = Field(default="", description="extra agents: 'pkg.module:Class,...'")
    poll_s: float = Field(default=1.0, gt=0, le=3600,
                          description="queue/outbox poll without wake-ups")
    reap_every_s: float = Field(default=5.0, gt=0, le=3600)
    claim_batch: int = Field(default=1000, ge=1, le=100_000)
    group_commit_ms: float = Field(default=100.0, ge=0, le=1000,
                                   description="the longest a journaled step waits to share "
                                   "its transaction with others (the wait follows the load)")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="the event loop the running roles use (uvloop, or the "
        "standard library's asyncio loop)")
    spread_s: float = Field(default=0.0, ge=0, le=86_400,
                            description="spread each slot's ticks over this many seconds after "
                            "it, each stack at its own phase (0: every tick at its slot)")
    catchup_slots: int = Field(default=6, ge=0, le=1000,
                               description="missed beat slots fanned out late")
    drain_grace_s: float = Field(default=5.0, ge=0, le=3600,
                                 description="on SIGTERM, how long running ticks may finish "
                                 "before they are handed back to the queue")
    retention_days: float = Field(default=14, ge=0, le=36_500,
                                  description="finished ticks older than this are deleted "
                                  "(0: kept forever)")
    lease_clock: Literal["database", "process"] = Field(
        default="database", description="PostgreSQL: measure leases on the database's clock "
        "(or, for tests on a fake clock, the process's)")

    # The LLM chain (providers without an API key are left out; none at all: simulated).
    llm_chain: str = "groq:llama-3.3-70b-versatile,openai:gpt-4o-mini"
    llm_timeout_s: float = Field(default=30.0, gt=0, le=3600,
                                 description="one attempt's timeout")
    llm_max_attempts: int = Field(default=3, ge=1, le=100, description="attempts per provider")
    llm_backoff_base_s: float = Field(default=0.5, ge=0, le=3600)
    llm_backoff_cap_s: float = Field(default=8.0, ge=0, le=3600)
    llm_max_wait_s: float = Field(default=10.0, ge=0, le=3600,
                                  description="longest retry-after honoured before falling back")
    breaker_threshold: int = Field(default=5, ge=1, le=100_000)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86_400)
    groq_rpm: int | None = Field(default=30, ge=1, le=10**9)
    groq_tpm: int | None = Field(default=12_000, ge=1, le=10**12)
    openai_rpm: int | None = Field(default=None, ge=1, le=10**9)
    openai_tpm: int | None = Field(default=None, ge=1, le=10**12)
    llm_prices: str = Field(default="", description='JSON: {"model": [usd_in, usd_out]} per 1M')

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: str) -> str:
        try:
            backend = make_url(normalise_url(v)).get_backend_name()
        except ArgumentError:
            backend = ""
        if backend not in ("sqlite", "postgresql"):
            raise ValueError("must be sqlite:///PATH (a file, relative to the current "
                             "directory, or sqlite:////absolute/path) or "
                             "postgresql://USER@HOST:PORT/DATABASE")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        if v is not None and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be redis://HOST:PORT[/DB], rediss://… or unix:///PATH")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. "
                             "https://tickwork.example.com")
        return v.strip().rstrip("/")

    @property
    def https(self) -> bool:
        """The dashboard is served over HTTPS (TICKWORK_PUBLIC_URL says so)."""
        return self.public_url is not None and urlsplit(self.public_url).scheme == "https"

    @field_validator("spread_s")
    @classmethod
    def _spread(cls, v: float, info: ValidationInfo) -> float:
        interval = info.data.get("tick_interval")
        if v and interval is not None and v >= interval:
            raise ValueError(f"must be less than the beat interval ({interval} s): each "
                             "stack's tick is spread within its slot")
        return v

    @field_validator("sim_latency_ms")
    @classmethod
    def _latency(cls, v: str) -> str:
        Latency.parse(v)
        return v

    @field_validator("llm_chain")
    @classmethod
    def _chain(cls, v: str) -> str:
        parse_spec(v)
        return v

    @field_validator("llm_prices")
    @classmethod
    def _prices(cls, v: str) -> str:
        parse_prices(v)
        return v

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: str) -> str:
        for path in (p.strip() for p in v.split(",")):
            if path and not _AGENT_PATH.match(path):
                raise ValueError(f"{path!r} is not an import path: write package.module:Class "
                                 "(several separated by commas)")
        return v

    @property
    def prices(self) -> dict[str, PriceLike] | None:
        return parse_prices(self.llm_prices)

    @property
    def sim_latency(self) -> Latency:
        return Latency.parse(self.sim_latency_ms)

    @property
    def agent_paths(self) -> list[str]:
        return [p.strip() for p in self.agents.split(",") if p.strip()]


def parse_prices(text: str) -> dict[str, PriceLike] | None:
    """TICKWORK_LLM_PRICES: a JSON object of model → [input, output] US dollars per million
    tokens (None when empty). Raises ValueError saying what is wrong."""
    if not text.strip():
        return None
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc}); write e.g. {PRICES_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of model: [input, output] US dollars per "
                         f"million tokens, e.g. {PRICES_EXAMPLE}")
    for model, price in value.items():
        if (not isinstance(price, list) or len(price) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool)
                           for x in price)):
            raise ValueError(f"the price of {model!r} must be [input, output] US dollars per "
                             f"million tokens, e.g. {PRICES_EXAMPLE}")
    try:
        PriceTable(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, e.g. {PRICES_EXAMPLE}") from None
    return value


class ProviderEnv(BaseSettings):
    """The providers' own variables, read as their SDKs read them (and from `.env`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    groq_api_key: SecretStr | None = None
    groq_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None

    @field_validator("groq_base_url", "openai_base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return v.strip()

    def as_env(self) -> dict[str, str]:
        """The set ones, under the SDKs' variable names."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value:
                out[name.upper()] = str(value)
        return out
