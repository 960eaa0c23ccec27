"""Settings: one frozen object, read from the environment (and `.env`) and handed down."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.llm.latency import Latency


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TICKWORK_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite:///tickwork.db"
    redis_url: str | None = None
    tick_interval: int = Field(default=10, ge=1, le=86_400, description="the beat, seconds")
    lease_s: float = Field(default=30.0, gt=0, description="a claimed tick's lease")
    max_concurrent_ticks: int = Field(default=1000, ge=1)
    tick_timeout_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="tries per tick before it fails")
    sim_latency_ms: str = "150,400"
    sim_seed: int = 0
    admin_token: SecretStr | None = None
    agents: str = Field(default="", description="extra agents: 'pkg.module:Class,...'")
    poll_s: float = Field(default=1.0, gt=0, description="queue/outbox poll without wake-ups")
    reap_every_s: float = Field(default=5.0, gt=0)
    claim_batch: int = Field(default=200, ge=1)
    catchup_slots: int = Field(default=6, ge=0, description="missed beat slots fanned out late")

    @field_validator("sim_latency_ms")
    @classmethod
    def _latency(cls, v: str) -> str:
        Latency.parse(v)
        return v

    @property
    def sim_latency(self) -> Latency:
        return Latency.parse(self.sim_latency_ms)

    @property
    def agent_paths(self) -> list[str]:
        return [p.strip() for p in self.agents.split(",") if p.strip()]
