"""Random interleavings of everything that happens to ticks, with every invariant checked
after each step.

Beats fire, two workers claim, ticks advance one model call at a time (each call waits at a
gate a rule opens), workers crash (their ticks are dropped unfinished) or heartbeat, the clock
jumps past leases, the reaper runs, stacks are paused and played. The real worker, runner,
journal, queue, reaper and beat do the work; the database is the one the `db` fixture made.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import orjson
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from agents.llm.base import LLMRequest
from agents.registry import DEFAULT_TEAM, AgentRegistry
from orchestrator import stacks
from orchestrator.beat import Beat
from orchestrator.bus import InProcessBus
from orchestrator.reaper import Reaper
from orchestrator.runner import TickRunner
from orchestrator.slots import next_fire
from orchestrator.store import queue
from orchestrator.worker import Worker, WorkerConfig
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.migrate import upgrade
from schema.models import TERMINAL
from tests.conftest import store_of
from tests.engine_helpers import BEAT, Gate, GatedLLM, new_stack, seed_of

LEASE = 30.0
MAX_ATTEMPTS = 3
STACKS = 3
_names = itertools.count()
# No shrinking: a failure reports its whole (derandomised, so reproducible) run at once,
# well within the per-test timeout.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]


class JournalCheckingLLM(GatedLLM):
    """Every call waits at a gate; a call for a step the journal already holds is recorded."""

    def __init__(self, db: Database, clock: FakeClock) -> None:
        super().__init__(clock)
        self.db = db
        self.reruns: list[str] = []

    async def _before(self, request: LLMRequest) -> None:
        stack_id, slot, agent = seed_of(request)
        index = DEFAULT_TEAM.index(agent)
        # The seed names the tick by its slot, or "t<id>" for a tick outside the beat's slots.
        which = (t.ticks.c.id == int(slot[1:]) if slot.startswith("t")
                 else t.ticks.c.slot == int(slot))
        with self.db.read() as conn:
            done = conn.execute(
                select(func.count()).select_from(t.steps.join(t.ticks))
                .where(t.ticks.c.stack_id == stack_id, which,
                       t.steps.c.index == index, t.steps.c.status == "succeeded")).scalar_one()
        if done:
            self.reruns.append(request.seed)
        await super()._before(request)


class TickMachine(RuleBasedStateMachine):
    db: ClassVar[Database]

    def __init__(self) -> None:
        super().__init__()
        # Each run starts at the same time: its stacks are new, so old rows never collide.
        self.clock = FakeClock(1_800_000_000.0)
        self.loop = asyncio.new_event_loop()
        self.llm = JournalCheckingLLM(self.db, self.clock)
        self.bus = InProcessBus(self.clock, self.loop)
        self.store = store_of(self.db)
        self.runner = TickRunner(self.store, AgentRegistry.default(plugins=False), self.llm,
                                 self.clock, LEASE)
        self.workers = [self._worker(), self._worker()]
        self.reaper = Reaper(self.store, self.clock, MAX_ATTEMPTS, 5.0)
        self.beat = Beat(self.store, self.clock, BEAT)
        with self.db.write() as conn:  # earlier runs' stacks, whatever became of them
            stacks.pause_all(conn, "an earlier run", self.clock.now())
        self.stack_ids = [new_stack(self.db, self.clock, f"m{next(_names)}")
                          for _ in range(STACKS)]
        self.terminal: dict[int, str] = {}
        self.seen_steps: set[int] = set()
        self.event_cursor = 0
        self.state = dict.fromkeys(self.stack_ids, "running")

    def _worker(self) -> Worker:
        return Worker(self.store, self.runner, self.bus, self.clock,
                      WorkerConfig(lease_s=LEASE, claim_batch=2, tick_timeout_s=600))

    # -- driving the loop ----------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [entry.task for w in self.workers for entry in w._running.values()]

    def _settle(self) -> None:
        """Let every tick task run until it waits at a gate or has ended."""
        async def quiet() -> None:
            deadline = time.monotonic() + 20
            while True:
                gated = {g.task for g in self.llm.waiting if not g.opened.done()}
                if all(task.done() or task in gated for task in self._tasks()):
                    return
                assert time.monotonic() < deadline, "the engine did not settle"
                await asyncio.sleep(0.001)

        self._run(quiet())

    # -- rules ---------------------------------------------------------------------------

    @rule()
    def fire_beat(self) -> None:
        self.clock.set(next_fire(self.clock.now(), BEAT))
        self._run(self.beat.fire())

    @rule(w=st.integers(0, 1))
    def claim(self, w: int) -> None:
        self._run(self.workers[w].claim_once())
        self._settle()

    def _gates(self) -> list[Gate]:
        """The calls waiting at a gate, in an order that does not depend on thread timing."""
        return sorted(self.llm.waiting, key=lambda g: (seed_of(g.request), g.request.seed))

    @precondition(lambda self: bool(self.llm.waiting))
    @rule(pick=st.integers(0, 10), calls=st.integers(1, 4))
    def step(self, pick: int, calls: int) -> None:
        """Let one tick's model answer `calls` times in a row (one step each)."""
        gates = self._gates()
        task = gates[pick % len(gates)].task
        for _ in range(calls):
            gate = next((g for g in self.llm.waiting if g.task is task), None)
            if gate is None:
                return
            self.llm.release(gate)
            self._settle()

    @precondition(lambda self: bool(self.llm.waiting))
    @rule(pick=st.integers(0, 10))
    def finish(self, pick: int) -> None:
        """Let one tick run to its end, undisturbed."""
        self.step(pick, len(DEFAULT_TEAM))

    @rule(w=st.integers(0, 1))
    def crash(self, w: int) -> None:
        for task in self._tasks_of(w):
            task.cancel()
        self._settle()
        self.workers[w] = self._worker()  # a new process with a new id

    def _tasks_of(self, w: int) -> list[asyncio.Task[None]]:
        return [entry.task for entry in self.workers[w]._running.values()]

    @rule(w=st.integers(0, 1))
    def heartbeat(self, w: int) -> None:
        self._run(self.workers[w].heartbeat_once())
        self._settle()
        held = list(self.workers[w]._running)  # what it still runs after the heartbeat
        with self.db.read() as conn:
            for tick_id, attempt in held:
                row = conn.execute(select(t.ticks).where(t.ticks.c.id == tick_id)
                                   ).mappings().one()
                assert (row["status"], row["attempt"], row["lease_expires_at"]) == (
                    "running", attempt, self.clock.now() + LEASE), dict(row)

    @rule()
    def expire_leases(self) -> None:
        self.clock.advance(LEASE + 1)

    @rule()
    def expire_and_reap(self) -> None:
        self.expire_leases()
        self.reap()

    @rule()
    def reap(self) -> None:
        self._run(self.reaper.reap_once())
        with self.db.read() as conn:
            stale = conn.execute(select(t.ticks.c.id).where(
                t.ticks.c.status == "running",
                t.ticks.c.lease_expires_at < self.clock.now())).scalars().all()
        assert stale == [], f"ticks running past their lease after a reap: {stale}"

    @rule(i=st.integers(0, STACKS - 1))
    def pause_or_play(self, i: int) -> None:
        sid = self.stack_ids[i]
        with self.db.write() as conn:
            if self.state[sid] == "running":
                stacks.pause(conn, sid, None, self.clock.now())
            else:
                stacks.play(conn, sid, now=self.clock.now(), agents=stacks.Agents(()))
        self.the_outbox_tells_the_truth()  # brings self.state up to date

    # -- invariants ----------------------------------------------------------------------

    def _ticks(self) -> list[Any]:
        with self.db.read() as conn:
            return list(conn.execute(select(t.ticks).where(
                t.ticks.c.stack_id.in_(self.stack_ids))).mappings())

    @invariant()
    def one_tick_per_stack_and_slot(self) -> None:
        keys = Counter((r["stack_id"], r["slot"]) for r in self._ticks()
                       if r["slot"] is not None)  # start and manual ticks have no slot
        assert max(keys.values(), default=1) == 1, keys

    @invariant()
    def at_most_one_running_or_queued_per_stack(self) -> None:
        rows = self._ticks()
        running = Counter(r["stack_id"] for r in rows if r["status"] == "running")
        active = Counter(r["stack_id"] for r in rows if r["status"] in ("queued", "running"))
        assert max(running.values(), default=0) <= 1, running
        assert max(active.values(), default=0) <= 1, active

    @invariant()
    def a_paused_stack_has_no_queued_tick(self) -> None:
        with self.db.read() as conn:
            waiting = conn.execute(select(t.ticks.c.id).join(t.stacks).where(
                t.ticks.c.stack_id.in_(self.stack_ids), t.ticks.c.status == "queued",
                t.stacks.c.execution_state != "running")).scalars().all()
        assert waiting == [], f"queued ticks of paused stacks: {waiting}"

    @invariant()
    def ticks_fail_only_when_their_attempts_run_out(self) -> None:
        # The simulated model always answers validly: the only way to fail is three leases.
        for r in self._ticks():
            if r["status"] in ("failed", "timed_out"):
                assert (r["status"], r["reason"], r["attempt"]) == (
                    "failed", queue.REASON_LEASE_FAILED, MAX_ATTEMPTS), dict(r)

    @invariant()
    def terminal_ticks_never_change(self) -> None:
        now = {r["id"]: r["status"] for r in self._ticks()}
        for tick_id, status in self.terminal.items():
            assert now[tick_id] == status, (tick_id, status, now[tick_id])
        self.terminal.update({i: s for i, s in now.items() if s in TERMINAL})

    @invariant()
    def no_journaled_step_calls_the_model_again(self) -> None:
        assert self.llm.reruns == []

    @invariant()
    def steps_are_journaled_in_order_once(self) -> None:
        with self.db.read() as conn:
            steps = list(conn.execute(
                select(t.steps.c.id, t.steps.c.tick_id, t.steps.c.index, t.steps.c.status,
                       t.steps.c.attempt)
                .join(t.ticks).where(t.ticks.c.stack_id.in_(self.stack_ids))
                .order_by(t.steps.c.tick_id, t.steps.c.index)))
        by_tick: dict[int, list[tuple[int, str]]] = {}
        rows = {r["id"]: r for r in self._ticks()}
        for step_id, tick_id, index, status, attempt in steps:
            by_tick.setdefault(tick_id, []).append((index, status))
            if step_id not in self.seen_steps:  # written since the last check: by the
                self.seen_steps.add(step_id)     # attempt that holds the tick, none other
                assert attempt == rows[tick_id]["attempt"], (tick_id, index, attempt)
        for tick_id, done in by_tick.items():
            assert [i for i, _ in done] == list(range(len(done))), done
            complete = done == [(i, "succeeded") for i in range(len(DEFAULT_TEAM))]
            # The last step finalises the tick in its own transaction: both or neither.
            assert complete == (rows[tick_id]["status"] == "succeeded"), (tick_id, done)

    @invariant()
    def the_outbox_tells_the_truth(self) -> None:
        """No tick starts while its stack is paused (in commit order); every terminal tick has
        one tick.finished event, and each tick's last event carries its current status."""
        with self.db.read() as conn:
            events = list(conn.execute(select(t.events).where(
                t.events.c.stack_id.in_(self.stack_ids), t.events.c.id > self.event_cursor)
                .order_by(t.events.c.id)).mappings())
            every = list(conn.execute(select(t.events).where(
                t.events.c.stack_id.in_(self.stack_ids), t.events.c.tick_id.is_not(None))
                .order_by(t.events.c.id)).mappings())
        for e in events:
            data = orjson.loads(e["data"])
            if e["kind"] == "stack.updated":
                self.state[e["stack_id"]] = data["execution_state"]
            elif e["kind"] == "tick.started":
                assert self.state[e["stack_id"]] == "running", f"started while paused: {e}"
            self.event_cursor = e["id"]
        last: dict[int, str] = {}
        finished: Counter[int] = Counter()
        queued: Counter[int] = Counter()
        for e in every:
            if e["kind"].startswith("tick."):
                last[e["tick_id"]] = orjson.loads(e["data"])["status"]
            finished[e["tick_id"]] += e["kind"] == "tick.finished"
            queued[e["tick_id"]] += e["kind"] == "tick.queued"
        for r in self._ticks():
            assert last[r["id"]] == r["status"], (r["id"], last[r["id"]], r["status"])
            assert finished[r["id"]] == (1 if r["status"] in TERMINAL else 0), r["id"]
            if r["status"] != "skipped":  # queued once, then once more per retry
                assert queued[r["id"]] == r["attempt"], (r["id"], queued[r["id"]])

    def teardown(self) -> None:
        try:
            tasks = self._tasks()
            for task in tasks:
                task.cancel()

            async def stopped() -> None:
                await asyncio.gather(*tasks, return_exceptions=True)

            self._run(stopped())
        finally:
            self.loop.close()


def test_random_interleavings_keep_every_invariant(db: Database) -> None:
    TickMachine.db = db
    examples = 100 if db.is_sqlite else 40
    run_state_machine_as_test(TickMachine, settings=settings(
        max_examples=examples, stateful_step_count=25, deadline=None, derandomize=True,
        database=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow]))


def test_a_long_run_keeps_every_invariant(tmp_path: Path) -> None:
    """Fewer, longer runs (on SQLite): leases expire again and again, ticks use up their
    attempts, stacks are paused and played several times within one run."""
    db = Database(f"sqlite:///{tmp_path / 'long.db'}")
    try:
        upgrade(db)
        TickMachine.db = db
        run_state_machine_as_test(TickMachine, settings=settings(
            max_examples=10, stateful_step_count=80, deadline=None, derandomize=True,
            database=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow]))
    finally:
        db.close()
