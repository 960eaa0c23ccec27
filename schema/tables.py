"""SQLAlchemy Core tables. The constraints here carry the invariants of docs/design.md.

Times are float seconds since the epoch (UTC), written from the injected Clock: the same type
on SQLite and PostgreSQL, cheap to compare, and never read from the database's own clock.
JSON columns are text written with orjson, so both databases store the same bytes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BIGINT on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

ACTIVE = ("queued", "running")

stacks = Table(
    "stacks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("goal", Text, nullable=False, server_default=""),
    Column("execution_state", String(16), nullable=False),
    Column("interval_s", Integer, nullable=True),  # NULL: the beat's own interval
    Column("team", Text, nullable=True),  # JSON list of agent names; NULL: the default team
    Column("pause_reason", Text, nullable=True),
    Column("budget_tokens_per_day", Integer, nullable=True),  # NULL: no limit
    Column("budget_usd_per_day", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("deleted_at", Float, nullable=True),
    Index(
        "uq_stacks_live_name",
        "name",
        unique=True,
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
    Index("ix_stacks_execution_state", "execution_state"),
)

ticks = Table(
    "ticks",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("stack_id", Integer, ForeignKey("stacks.id"), nullable=False),
    Column("slot", BigInteger, nullable=True),  # NULL for a tick run by hand
    Column("scheduled_at", Float, nullable=False),
    Column("trigger", String(16), nullable=False),  # beat | start | manual
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("reason", Text, nullable=True),
    Column("queued_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("worker_id", String(64), nullable=True),
    # Times a stopping worker handed the tick back: each moved `attempt` on (the fencing
    # token) without using one of its attempts.
    Column("released", Integer, nullable=False, server_default="0"),
    # What this tick's LLM attempts cost, summed as each step commits.
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    # The OpenTelemetry trace of the latest attempt that journaled a step while traced (hex
    # trace id and root span id): a retried attempt's trace links to it. NULL: not traced.
    Column("trace_id", String(32), nullable=True),
    Column("trace_span_id", String(16), nullable=True),
    # Invariant 1: at most one tick per (stack, slot).
    UniqueConstraint("stack_id", "slot", name="uq_ticks_stack_slot"),
    # Invariant 2, and more: at most one queued-or-running tick per stack.
    Index(
        "uq_ticks_one_active_per_stack",
        "stack_id",
        unique=True,
        sqlite_where=text("status IN ('queued', 'running')"),
        postgresql_where=text("status IN ('queued', 'running')"),
    ),
    Index("ix_ticks_status_scheduled", "status", "scheduled_at"),
    Index("ix_ticks_status_lease", "status", "lease_expires_at"),
    Index("ix_ticks_stack_id_id", "stack_id", "id"),
    Index("ix_ticks_stack_status", "stack_id", "status"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("tick_id", BigInteger, ForeignKey("ticks.id"), nullable=False),
    Column("index", Integer, nullable=False),
    Column("agent", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),  # the tick attempt that ran this step
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("prompt", Text, nullable=True),  # JSON list of chat messages
    Column("output", Text, nullable=True),  # JSON of the validated output
    Column("raw_output", Text, nullable=True),  # what the model said, when it did not validate
    Column("error", Text, nullable=True),
    UniqueConstraint("tick_id", "index", name="uq_steps_tick_index"),
)

llm_attempts = Table(
    "llm_attempts",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("step_id", BigInteger, ForeignKey("steps.id"), nullable=False),
    Column("tick_id", BigInteger, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("model", String(100), nullable=False),
    Column("status", String(32), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    Column("retry_after_s", Float, nullable=True),
    Column("started_at", Float, nullable=False),
    Index("ix_llm_attempts_tick_id", "tick_id"),
)

memories = Table(
    "memories",
    metadata,
    Column("stack_id", Integer, ForeignKey("stacks.id"), primary_key=True),
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("tick_id", BigInteger, nullable=True),
    Column("updated_at", Float, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("stack_id", Integer, ForeignKey("stacks.id"), nullable=False),
    Column("tick_id", BigInteger, nullable=False),
    Column("agent", String(100), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_stack_id_id", "stack_id", "id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("stack_id", Integer, ForeignKey("stacks.id"), nullable=False),
    Column("tick_id", BigInteger, nullable=False),
    Column("agent", String(100), nullable=False),
    Column("title", String(300), nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_artifacts_stack_id_id", "stack_id", "id"),
)

# What each stack spent per UTC day (day = floor(t / 86400)): budgets are checked against it.
# And how many of its ticks reached each final status that day: tick counts are sums over
# these rows, and they outlive the retention that deletes old ticks.
stack_usage = Table(
    "stack_usage",
    metadata,
    Column("stack_id", Integer, ForeignKey("stacks.id"), primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("llm_calls", Integer, nullable=False, server_default="0"),
    Column("ticks_succeeded", Integer, nullable=False, server_default="0"),
    Column("ticks_failed", Integer, nullable=False, server_default="0"),
    Column("ticks_timed_out", Integer, nullable=False, server_default="0"),
    Column("ticks_cancelled", Integer, nullable=False, server_default="0"),
    Column("ticks_skipped_queued", Integer, nullable=False, server_default="0"),
    Column("ticks_skipped_running", Integer, nullable=False, server_default="0"),
)

# Facts about the whole system that every process and command reads the same way (the beat
# interval the beat runs at, for one), by key.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# The fleet: every running tickwork process (beat, worker, dashboard, or all three in `up`)
# registers here, heartbeats, and deregisters on exit; a row whose heartbeat is older than the
# lease belongs to a process that died.
processes = Table(
    "processes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("running", Integer, nullable=False, server_default="0"),
    Column("finished", BigInteger, nullable=False, server_default="0"),
    Column("agents", Text, nullable=True),  # JSON list of the agents a worker can run
    Column("info", Text, nullable=True),  # JSON: the beat interval, the LLM chain, ...
    Index("ix_processes_heartbeat_at", "heartbeat_at"),
)

# The outbox: every change the dashboard shows adds a row here in the transaction that makes it.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("stack_id", Integer, nullable=True),
    Column("tick_id", BigInteger, nullable=True),
    Column("data", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
