"""Admission rules (shim/serving/admission.py) with an injected clock and timer: no server,
no sleeps.

The same rules under real load, against real servers, are in tests/test_overload.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from shim.serving.admission import Admission, GradientLimit, Shed, SlidingMinimum


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A timer that fires only when the test says so."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.armed: list[tuple[float, Callable[[], None], Handle]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle()
        self.armed.append((self.clock.now + delay, callback, handle))
        return handle

    def fire_due(self) -> None:
        for at, callback, handle in list(self.armed):
            if at <= self.clock.now and not handle.cancelled:
                self.armed.remove((at, callback, handle))
                callback()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def admission(clock: Clock, timers: Timers, *, limit: int = 2, queue_limit: int = 100) -> Admission:
    controller = GradientLimit(floor=1, ceiling=limit, clock=clock)
    return Admission("rust", controller, queue_limit=queue_limit, clock=clock, timer=timers)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_are_taken_at_once_up_to_the_limit_and_then_requests_wait() -> None:
    async def scenario() -> None:
        clock = Clock()
        gate = admission(clock, Timers(clock), limit=2)
        assert gate.try_enter() and gate.try_enter()
        assert not gate.try_enter()
        waiting = asyncio.create_task(gate.enter("a", 1.0))
        await settle()
        assert gate.queued == 1 and not waiting.done()
        clock.now += 0.25
        gate.leave("embed", 0.01)
        assert await waiting == pytest.approx(0.25)
        assert (gate.inflight, gate.queued) == (2, 0)  # the slot was handed on, not freed
        assert not gate.try_enter()

    run(scenario)


def test_callers_take_turns_so_a_burst_does_not_hold_back_a_trickle() -> None:
    async def scenario() -> None:
        clock = Clock()
        gate = admission(clock, Timers(clock), limit=1)
        assert gate.try_enter()
        served: list[str] = []

        async def request(caller: str, number: int) -> None:
            await gate.enter(caller, 10.0)
            served.append(f"{caller}{number}")

        tasks = [asyncio.create_task(request("burst", n)) for n in range(5)]
        await settle()
        tasks += [asyncio.create_task(request("trickle", n)) for n in range(2)]
        await settle()
        for _ in range(7):
            gate.leave("embed", 0.01)
            await settle()
        await asyncio.gather(*tasks)
        assert served == ["burst0", "trickle0", "burst1", "trickle1", "burst2", "burst3", "burst4"]

    run(scenario)


def test_a_waiter_is_shed_when_its_budget_is_spent_and_not_before() -> None:
    async def scenario() -> None:
        clock = Clock()
        timers = Timers(clock)
        gate = admission(clock, timers, limit=1)
        assert gate.try_enter()
        short = asyncio.create_task(gate.enter("a", 0.5))
        long = asyncio.create_task(gate.enter("b", 2.0))
        await settle()
        clock.now += 0.45
        timers.fire_due()
        await settle()
        assert not short.done()
        clock.now += 0.1
        timers.fire_due()
        await settle()
        with pytest.raises(Shed) as shed:
            await short
        assert shed.value.reason == "wait_budget" and "0.5 s" in shed.value.message
        assert gate.queued == 1 and not long.done()
        gate.leave("embed", 0.01)
        assert await long == pytest.approx(0.55)

    run(scenario)


def test_a_full_queue_sheds_the_newest_request_of_the_caller_with_the_most() -> None:
    async def scenario() -> None:
        clock = Clock()
        gate = admission(clock, Timers(clock), limit=1, queue_limit=3)
        assert gate.try_enter()
        heavy = [asyncio.create_task(gate.enter("heavy", 10.0)) for _ in range(3)]
        await settle()
        light = asyncio.create_task(gate.enter("light", 10.0))
        await settle()
        with pytest.raises(Shed) as evicted:
            await heavy[2]
        assert evicted.value.reason == "caller_share"
        assert gate.queued == 3
        with pytest.raises(Shed) as refused:  # the heaviest caller's newcomer is shed outright
            await gate.enter("heavy", 10.0)
        assert refused.value.reason == "queue_full"
        for _ in range(3):
            gate.leave("embed", 0.01)
            await settle()
        assert all(t.done() and t.exception() is None for t in (heavy[0], heavy[1], light))

    run(scenario)


def test_a_cancelled_waiter_leaves_the_queue_and_a_slot_it_was_handed_goes_on() -> None:
    async def scenario() -> None:
        clock = Clock()
        gate = admission(clock, Timers(clock), limit=1)
        assert gate.try_enter()
        gone = asyncio.create_task(gate.enter("a", 10.0))
        handed = asyncio.create_task(gate.enter("b", 10.0))
        last = asyncio.create_task(gate.enter("c", 10.0))
        await settle()
        gone.cancel()
        await settle()
        assert gate.queued == 2
        gate.leave("embed", 0.01)  # hands the slot to b ...
        handed.cancel()  # ... whose client leaves before it runs: c gets it
        await settle()
        assert handed.cancelled()
        assert await last >= 0
        assert (gate.inflight, gate.queued) == (1, 0)

    run(scenario)


def feed(controller: GradientLimit, clock: Clock, seconds: float, inflight: int, n: int) -> None:
    """`n` answers of `seconds` each, spread over as many controller intervals as they fill."""
    for _ in range(n):
        clock.now += seconds / max(inflight, 1)
        controller.sample("embed", seconds, inflight)


def test_the_limit_stays_at_the_ceiling_while_latency_holds() -> None:
    clock = Clock()
    controller = GradientLimit(floor=8, ceiling=256, clock=clock)
    feed(controller, clock, 0.005, 4, 200)  # quiet: the baseline
    feed(controller, clock, 0.006, 250, 20_000)
    assert controller.limit == 256


def test_the_limit_shrinks_when_the_backend_slows_under_load_and_grows_back() -> None:
    clock = Clock()
    controller = GradientLimit(floor=8, ceiling=256, clock=clock)
    feed(controller, clock, 0.005, 4, 200)
    feed(controller, clock, 0.050, 250, 2_000)  # 10x slower with the limit in use
    assert controller.limit <= 32
    began = clock.now
    while controller.limit < 256 and clock.now - began < 10:  # latency back to the baseline,
        feed(controller, clock, 0.005, controller.limit, 50)  # with demand to use the limit
    assert controller.limit == 256
    assert clock.now - began < 3


def test_an_idle_limit_is_not_judged() -> None:
    clock = Clock()
    controller = GradientLimit(floor=8, ceiling=256, clock=clock)
    feed(controller, clock, 0.005, 4, 200)
    feed(controller, clock, 0.500, 4, 200)  # slow, but 4 in flight: the limit is not the cause
    assert controller.limit == 256


def test_routes_are_judged_against_their_own_baselines() -> None:
    clock = Clock()
    controller = GradientLimit(floor=8, ceiling=256, clock=clock)
    for _ in range(5_000):  # a fast and a slow endpoint on one backend, both steady
        clock.now += 0.0005
        controller.sample("embed", 0.005, 200)
        controller.sample("chat", 2.0, 200)
    assert controller.limit == 256


def test_sliding_minimum_forgets_old_lows_but_keeps_a_baseline() -> None:
    window = SlidingMinimum(10.0)
    window.add(1.0, 0.0)
    window.add(3.0, 5.0)
    assert window.value(6.0) == 1.0
    assert window.value(12.0) == 3.0  # 1.0 is older than the window
    assert window.value(100.0) == 3.0  # nothing newer: the last value stands
    window.add(2.0, 101.0)
    assert window.value(101.0) == 2.0


def test_a_busy_workers_own_lateness_is_not_taken_for_a_slow_backend() -> None:
    clock = Clock()
    lateness = 0.0
    controller = GradientLimit(floor=8, ceiling=256, lag=lambda: lateness, clock=clock)
    feed(controller, clock, 0.005, 4, 200)
    lateness = 0.010  # the worker runs its callbacks 10 ms late: answers read ~40 ms late
    feed(controller, clock, 0.045, 250, 2_000)
    assert controller.limit == 256
    feed(controller, clock, 0.200, 250, 2_000)  # far more than the worker's lateness explains
    assert controller.limit < 64
