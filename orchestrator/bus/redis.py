"""The Redis bus: wake-ups after commit, for every process that shares a Redis.

After a transaction commits, the topics it touched (a tick was queued, events were written)
wake this process's subscribers at once, as the in-process bus does, and are published on
Redis pub/sub (`{prefix}bus:{topic}`, the message naming the process) for every other process,
whose subscriber task wakes its own. A process listens only to the topics it has readers of
(a worker to the queue, a dashboard to events, a beat to none), so no process spends its time
on messages nobody in it reads. Nothing but wake-ups travels: readers then ask the
database, which stays the only truth, so a message lost on the way only delays a reader to its
next poll.

Redis going away is not an outage. The bus says so once in the log (and in `status()`, which
/readyz and the System page show), readers fall back to polling the database every
TICKWORK_POLL_S, and the bus reconnects with backoff; once Redis answers again it says so,
wakes every local reader once (to catch up on anything a lost message would have announced)
and carries wake-ups again, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orchestrator.bus.inprocess import InProcessBus, InProcessSubscription
from orchestrator.interfaces import BusStatus
from schema.clock import Clock, within

log = logging.getLogger("tickwork.bus")

BACKOFF_S = 0.1  # the first reconnection wait; it doubles up to BACKOFF_CAP_S
BACKOFF_CAP_S = 2.0
# After publishing, the commits of the next PUBLISH_GAP_S go out together: the first commit
# after a quiet spell is published at once, and a busy process sends no more than one message
# per topic per gap (each costs every listener of the topic a wake-up and a read).
PUBLISH_GAP_S = 0.01


class RedisBus:
    def __init__(self, url: str, clock: Clock, *, prefix: str = "tickwork:",
                 sender: str = "") -> None:
        self._url = url
        self._clock = clock
        self._prefix = prefix
        self._sender = sender.encode()
        self._topics: set[str] = set()  # the topics this process has readers of
        self._pubsub: Any = None  # the listener's, while connected
        self._new_topic = asyncio.Event()
        self._local = InProcessBus(clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing: set[str] = set()
        self._wake_publisher = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._since: float | None = None
        self._error: str | None = None
        self._client: aioredis.Redis | None = None

    # -- the Bus interface ----------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._local.bind(loop)

    async def start(self) -> None:
        if self._tasks:
            return
        self.bind(asyncio.get_running_loop())
        self._client = aioredis.Redis.from_url(self._url, socket_timeout=5,
                                               socket_connect_timeout=2,
                                               health_check_interval=10)
        self._tasks = [asyncio.create_task(self._listen(), name="tickwork-bus-listen"),
                       asyncio.create_task(self._publish_loop(), name="tickwork-bus-publish")]

    def publish(self, topics: frozenset[str]) -> None:
        self._local.publish(topics)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._queue, topics)

    def subscribe(self, topic: str) -> InProcessSubscription:
        sub = self._local.subscribe(topic)
        if topic not in self._topics:
            self._topics.add(topic)
            if self._pubsub is not None:  # connected: listen to it too from now on
                self._tasks.append(asyncio.create_task(self._listen_to(self._pubsub, topic)))
        return sub

    def status(self) -> BusStatus:
        return BusStatus("redis", self._connected, self._since, self._error)

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        await self._local.close()

    # -- carrying wake-ups ---------------------------------------------------------------------

    def channel(self, topic: str) -> str:
        return f"{self._prefix}bus:{topic}"

    async def _listen_to(self, pubsub: Any, topic: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # the listener notices it too
            await pubsub.subscribe(self.channel(topic))
        self._local.deliver(frozenset((topic,)))  # what it may have missed meanwhile
        self._new_topic.set()  # a listener idle for want of a topic listens now

    def _queue(self, topics: frozenset[str]) -> None:
        self._outgoing |= topics
        self._wake_publisher.set()

    async def _publish_loop(self) -> None:
        client = self._client
        assert client is not None
        while True:
            await self._wake_publisher.wait()
            self._wake_publisher.clear()
            topics, self._outgoing = self._outgoing, set()
            if not self._connected:
                continue  # readers poll; the listener reconnects
            try:
                for topic in sorted(topics):
                    await client.publish(self.channel(topic), self._sender)
            except (RedisError, OSError) as exc:
                self._went_away(exc)
            # Pacing the transport, not scheduling: the loop's own time, whatever the Clock.
            await asyncio.sleep(PUBLISH_GAP_S)

    async def _listen(self) -> None:
        assert self._client is not None
        wait = BACKOFF_S
        prefix = self.channel("")
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                self._pubsub = pubsub  # a topic subscribed from now on is added to it
                topics = sorted(self._topics)
                if topics:
                    await pubsub.subscribe(*(self.channel(t) for t in topics))
                else:
                    await pubsub.ping()
                self._came_back()
                wait = BACKOFF_S
                while True:
                    if not pubsub.subscribed:
                        await self._idle(5.0)
                        if not pubsub.subscribed:
                            await pubsub.ping()
                        continue
                    message: Any = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()
                        continue
                    if message.get("data") == self._sender:
                        continue  # our own: already delivered here
                    channel = _text(message.get("channel"))
                    if channel.startswith(prefix):
                        self._local.deliver(frozenset((channel[len(prefix):],)))
            except (RedisError, OSError) as exc:
                self._went_away(exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(wait)
            wait = min(BACKOFF_CAP_S, wait * 2)

    async def _idle(self, timeout: float) -> None:
        """No topic to listen to yet: wait for one (or ping, the health check)."""
        with contextlib.suppress(TimeoutError):
            await within(self._clock, timeout, self._new_topic.wait())
        self._new_topic.clear()

    def _came_back(self) -> None:
        if self._connected:
            return
        was_away = self._error is not None
        self._connected, self._since, self._error = True, self._clock.now(), None
        if was_away:
            log.warning("Redis at %s answers again: wake-ups travel between processes again",
                        _masked(self._url))
        else:
            log.info("wake-ups travel between processes over Redis at %s", _masked(self._url))
        # Whatever a lost message would have announced: every local reader looks once.
        self._local.deliver(frozenset(self._topics))

    def _went_away(self, exc: BaseException) -> None:
        if not self._connected and self._error is not None:
            return  # said once already
        self._connected, self._since = False, self._clock.now()
        self._error = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("Redis at %s is unavailable (%s); readers poll the database until it "
                    "answers again", _masked(self._url), self._error)


class CommandPublisher:
    """For the short commands (`tickwork stacks pause …`), which run no event loop: after each
    commit, one PUBLISH per topic over a plain connection, so the fleet's workers and
    dashboards hear of the change at once. Redis being away costs the command nothing: the
    readers' next poll finds the change."""

    def __init__(self, url: str, *, prefix: str = "tickwork:") -> None:
        import redis
        self._client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._prefix = prefix

    def publish(self, topics: frozenset[str]) -> None:
        try:
            for topic in sorted(topics):
                self._client.publish(f"{self._prefix}bus:{topic}", b"cli")
        except (RedisError, OSError) as exc:
            log.info("could not tell the fleet over Redis (%s); it finds the change on its "
                     "next poll", type(exc).__name__)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _masked(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
