"""The in-process event bus and the SSE generator on their own: per-run state lives while it
is used and a little after, whatever state the run ends in, and a stream that ends (a client
that goes away included) leaves no task or subscription behind."""

from __future__ import annotations

import asyncio
import random
import uuid
from types import SimpleNamespace
from typing import Any

from deployments import REDIS_URL, require_production
from hal9100.events.base import RunEvent
from hal9100.events.memory import MemoryEventBus
from hal9100.events.redis import RedisEventBus
from hal9100.runs.streaming import DONE, event_stream

RETAIN = 0.1


def ev(name: str) -> RunEvent:
    return RunEvent(name, "{}")


async def drain(bus: MemoryEventBus, run_id: str, after: str) -> list[str]:
    return [item.event async for item in bus.subscribe(run_id, after)]


async def test_a_late_subscriber_gets_everything_then_the_log_goes() -> None:
    bus = MemoryEventBus(retain_seconds=RETAIN)
    position = await bus.position("run_1")
    for name in ("thread.run.created", "thread.run.in_progress", "thread.run.completed"):
        await bus.publish("run_1", ev(name))
    assert await drain(bus, "run_1", position) == [
        "thread.run.created",
        "thread.run.in_progress",
        "thread.run.completed",
    ]
    assert bus.held_runs() == 1
    await asyncio.sleep(RETAIN * 2.5)
    assert bus.held_runs() == 0
    await bus.aclose()


async def test_runs_that_never_finish_here_are_dropped_too() -> None:
    """A run whose thread was deleted, or that waits for tool outputs forever, publishes no
    terminal event: its log still goes once nobody uses it."""
    bus = MemoryEventBus(retain_seconds=RETAIN)
    await bus.position("run_gone")
    await bus.publish("run_gone", ev("thread.run.created"))
    await bus.publish("run_waiting", ev("thread.run.requires_action"))
    assert bus.held_runs() == 2
    await asyncio.sleep(RETAIN * 2.5)
    assert bus.held_runs() == 0
    await bus.aclose()


async def test_a_log_in_use_is_kept_past_its_retention() -> None:
    bus = MemoryEventBus(retain_seconds=RETAIN)
    position = await bus.position("run_1")
    reader = asyncio.create_task(drain(bus, "run_1", position))
    waiter = asyncio.create_task(bus.wait_cancel("run_1"))
    await asyncio.sleep(RETAIN * 3)
    assert bus.held_runs() == 1
    await bus.publish("run_1", ev("thread.message.delta"))
    await bus.request_cancel("run_1")
    await waiter
    await bus.publish("run_1", ev("thread.run.cancelled"))
    assert await reader == ["thread.message.delta", "thread.run.cancelled"]
    await asyncio.sleep(RETAIN * 2.5)
    assert bus.held_runs() == 0
    await bus.aclose()


async def test_a_cancelled_subscriber_lets_go() -> None:
    bus = MemoryEventBus(retain_seconds=RETAIN)
    position = await bus.position("run_1")
    reader = asyncio.create_task(drain(bus, "run_1", position))
    await asyncio.sleep(0.01)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await asyncio.sleep(RETAIN * 2.5)
    assert bus.held_runs() == 0
    await bus.aclose()


async def test_aclose_stops_the_reaper() -> None:
    bus = MemoryEventBus(retain_seconds=RETAIN)
    await bus.publish("run_1", ev("thread.run.created"))
    await bus.aclose()
    assert bus.held_runs() == 0
    assert bus._reaper is None


def fake_runtime(bus: MemoryEventBus, check_seconds: float = 30.0) -> Any:
    return SimpleNamespace(bus=bus, settings=SimpleNamespace(stream_check_seconds=check_seconds))


def others(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t not in before and not t.done()}


async def test_a_finished_stream_ends_with_done_and_leaves_nothing() -> None:
    bus = MemoryEventBus(retain_seconds=RETAIN)
    before = asyncio.all_tasks()
    position = await bus.position("run_1")
    for name in ("thread.run.created", "thread.run.failed"):
        await bus.publish("run_1", ev(name))
    response = event_stream(fake_runtime(bus), "run_1", position)
    frames = [chunk async for chunk in response.body_iterator]
    # Events already waiting go out together.
    assert frames == [
        b"event: thread.run.created\ndata: {}\n\nevent: thread.run.failed\ndata: {}\n\n",
        DONE,
    ]
    await asyncio.sleep(0)
    assert others(before) == set()
    await bus.aclose()


async def test_an_abandoned_stream_stops_its_pump_and_subscription() -> None:
    """What a client disconnect does: the response closes the generator mid-stream."""
    bus = MemoryEventBus(retain_seconds=RETAIN)
    before = asyncio.all_tasks()
    position = await bus.position("run_1")
    await bus.publish("run_1", ev("thread.run.created"))
    response = event_stream(fake_runtime(bus), "run_1", position)
    body: Any = response.body_iterator
    first = await body.__anext__()
    assert first.startswith(b"event: thread.run.created")
    pending = asyncio.ensure_future(body.__anext__())
    await asyncio.sleep(0.01)
    assert len(others(before)) == 2  # the pump, and this test's pending read
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await body.aclose()
    await asyncio.sleep(0)
    assert others(before) == set()
    # The run goes on without its watcher, and its log goes once idle.
    await bus.publish("run_1", ev("thread.run.completed"))
    await asyncio.sleep(RETAIN * 2.5)
    assert bus.held_runs() == 0
    await bus.aclose()


async def test_a_stream_closed_between_events_stops_its_pump() -> None:
    """The other shape of a disconnect: the generator is closed while it waits at a yield."""
    bus = MemoryEventBus(retain_seconds=RETAIN)
    before = asyncio.all_tasks()
    position = await bus.position("run_1")
    await bus.publish("run_1", ev("thread.run.created"))
    response = event_stream(fake_runtime(bus), "run_1", position)
    body: Any = response.body_iterator
    assert (await body.__anext__()).startswith(b"event: thread.run.created")
    assert len(others(before)) == 1  # the pump
    await body.aclose()
    await asyncio.sleep(0)
    assert others(before) == set()
    await bus.aclose()


async def test_a_bus_failure_becomes_an_error_event() -> None:
    class BrokenBus(MemoryEventBus):
        async def subscribe(self, run_id: str, after: str):  # type: ignore[override]
            yield ev("thread.run.created")
            raise ConnectionError("redis went away")

    bus = BrokenBus(retain_seconds=RETAIN)
    response = event_stream(fake_runtime(bus), "run_1", "0")
    body = b"".join([chunk async for chunk in response.body_iterator])
    blocks = body.split(b"\n\n")
    assert blocks[0].startswith(b"event: thread.run.created")
    assert blocks[1].startswith(b"event: error\ndata: {")
    assert b'"error":{' in blocks[1]
    assert blocks[2:] == [DONE.rstrip(b"\n"), b""]
    await bus.aclose()


async def test_a_publisher_cancelled_mid_command_stops_on_redis() -> None:
    """redis-py swallows a cancel that arrives while a command is in flight: a run's model
    stream cancelled (on expiry or cancel) while it published a delta went on to its end.
    Cancelled at every moment of a publish, the publisher stops, and the events it had
    published stay in order."""
    require_production()
    prefix = f"hal9100_test_bus_{uuid.uuid4().hex[:8]}"
    bus = RedisEventBus(REDIS_URL, prefix=prefix)
    chance = random.Random(9100)
    try:
        for trial in range(200):
            run_id = f"run_{trial}"

            async def publish_many(run_id: str = run_id) -> None:
                for index in range(200):
                    await bus.publish(run_id, RunEvent("thread.message.delta", str(index)))

            task = asyncio.create_task(publish_many())
            await asyncio.sleep(chance.random() * 0.004)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled(), f"trial {trial}: the cancel was lost"
            await bus.publish(run_id, ev("thread.run.cancelled"))
            events = [item async for item in bus.subscribe(run_id, "0-0")]
            assert events[-1].event == "thread.run.cancelled"
            assert [int(e.data) for e in events[:-1]] == list(range(len(events) - 1))
    finally:
        keys = [key async for key in bus.redis.scan_iter(f"{prefix}*")]
        if keys:
            await bus.redis.delete(*keys)
        await bus.aclose()
