"""Providers: build one authenticated SDK client per provider, from the SDK's own variables.

A provider knows where its API is and which key opens it; it does not call the model (that is
the adapter's job). The variables come in as a mapping, so the composition root decides where
they are read (the process environment, a test's dict) and nothing here reads `os.environ`.
Every client is built with the SDK's own retries off: the chain's retry policy is the only one,
so one attempt in a trace is one HTTP request. Both SDKs run on their aiohttp transport
(`DefaultAioHttpClient`, the `aiohttp` extras): about half the CPU of their default httpx
transport per call. One client per provider per process, its pool as large as the number of
ticks the process may run at once (`connections`), so no call waits for a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import groq
import httpx
import httpx2  # the HTTP client the openai SDK is built on (its dependency)
import openai


class Provider(Protocol):
    name: ClassVar[str]
    key_var: ClassVar[str]
    base_url_var: ClassVar[str]
    client: Any  # this provider's SDK client, for its adapter

    @property
    def base_url(self) -> str: ...

    async def aclose(self) -> None:
        """Close the client's connections (on shutdown)."""


def _limits(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def _limits2(connections: int) -> httpx2.Limits:
    return httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)


def _value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


class _SDKProvider:
    """What every provider shares: its base URL, closing its client, a key-free repr."""

    client: Any
    _base_url: str

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        await self.client.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"


class GroqProvider(_SDKProvider):
    """`groq.AsyncGroq` from GROQ_API_KEY and GROQ_BASE_URL."""

    name: ClassVar[str] = "groq"
    key_var: ClassVar[str] = "GROQ_API_KEY"
    base_url_var: ClassVar[str] = "GROQ_BASE_URL"
    default_base_url: ClassVar[str] = "https://api.groq.com"

    def __init__(self, api_key: str, *, base_url: str | None = None,
                 timeout_s: float = 30.0, connections: int = 1000) -> None:
        if not api_key:
            raise ValueError(f"{self.key_var} is empty")
        self._base_url = base_url or self.default_base_url
        # The base URL is always passed: given None, the SDK would read the process
        # environment itself, behind the caller's back.
        self.client = groq.AsyncGroq(
            api_key=api_key, base_url=self._base_url, max_retries=0, timeout=timeout_s,
            http_client=groq.DefaultAioHttpClient(timeout=timeout_s,
                                                  limits=_limits(connections)))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, timeout_s: float = 30.0,
                 connections: int = 1000) -> GroqProvider | None:
        """The provider, or None when its key is not set (the provider is not configured)."""
        key = _value(env, cls.key_var)
        if key is None:
            return None
        return cls(key, base_url=_value(env, cls.base_url_var), timeout_s=timeout_s,
                   connections=connections)



class OpenAIProvider(_SDKProvider):
    """`openai.AsyncOpenAI` from OPENAI_API_KEY and OPENAI_BASE_URL (and, as the SDK reads
    them, OPENAI_ORG_ID and OPENAI_PROJECT_ID)."""

    name: ClassVar[str] = "openai"
    key_var: ClassVar[str] = "OPENAI_API_KEY"
    base_url_var: ClassVar[str] = "OPENAI_BASE_URL"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"

    def __init__(self, api_key: str, *, base_url: str | None = None,
                 organization: str | None = None, project: str | None = None,
                 timeout_s: float = 30.0, connections: int = 1000) -> None:
        if not api_key:
            raise ValueError(f"{self.key_var} is empty")
        self._base_url = base_url or self.default_base_url
        self.client = openai.AsyncOpenAI(
            api_key=api_key, base_url=self._base_url, organization=organization,
            project=project, max_retries=0, timeout=timeout_s,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s,
                                                    limits=_limits2(connections)))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, timeout_s: float = 30.0,
                 connections: int = 1000) -> OpenAIProvider | None:
        """The provider, or None when its key is not set (the provider is not configured)."""
        key = _value(env, cls.key_var)
        if key is None:
            return None
        return cls(key, base_url=_value(env, cls.base_url_var),
                   organization=_value(env, "OPENAI_ORG_ID"),
                   project=_value(env, "OPENAI_PROJECT_ID"), timeout_s=timeout_s,
                   connections=connections)

