"""Admission: how many requests each backend gets at once, who waits for a turn, who is shed.

One `Admission` per backend per worker. A request takes a slot at once when fewer than
`limit` are in flight and nobody waits; otherwise it joins its caller's queue (the caller is
the canary key: `X-Shim-Key`, else the client address) and waits, up to its route's budget,
for the slot a finishing request hands on. Callers take turns, one waiter each (round robin
over the callers that have waiters), so a caller's burst of thousands queues behind itself,
not in front of another caller's trickle. A request is shed (the proxy answers 503
`overloaded` with `Retry-After`) for one of these reasons, never on a guess:

    wait_budget     it waited its whole budget and no slot came free
    queue_full      `queue_limit` requests wait, and its caller has the most of them
    caller_share    the queue was full and another caller's request took its place: the
                    caller with the most waiters loses its newest one first

The limit follows the backend (`GradientLimit`). No I/O here and no task per request: a
future per waiter, one timer per `Admission` for the earliest deadline, and one per worker
for its loop's lateness (`LoopLag`). `clock`, `timer` and `lag` are injectable, so the rules
are tested without a loop or real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Literal, Protocol

ShedReason = Literal["wait_budget", "queue_full", "caller_share"]
TIMER_SLACK = 0.01  # waiters due within this are shed together: one timer run, not one each
MIN_INTERVAL, MAX_INTERVAL = 0.05, 1.0  # the controller decides about once per round trip
MIN_SAMPLES = 10  # ... and never on fewer answers than this
LAG_PERIOD = 0.02  # how often a worker checks how late its event loop runs
# An answer's measured time includes about this many times the loop's mean lateness (the
# answer waits for the loop to read it, then for the request's task to be run).
LAG_FACTOR = 4.0


class Shed(Exception):
    """This request gets no slot; the proxy answers 503 `overloaded` with `Retry-After`."""

    def __init__(self, reason: ShedReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Timer = Callable[[float, Callable[[], None]], Cancellable]  # (delay in seconds, callback)


def loop_timer(delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback)


class SlidingMinimum:
    """The lowest value added in the last `window` seconds; the newest value when none is
    that recent (a baseline is kept, not forgotten, through a long busy spell).

    A monotonic deque: each value added drops the larger ones before it, so the front is the
    minimum and memory is bounded by the values added within the window.
    """

    __slots__ = ("values", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.values: deque[tuple[float, float]] = deque()  # (time, value), values ascending

    def add(self, value: float, now: float) -> None:
        while self.values and self.values[-1][1] >= value:
            self.values.pop()
        self.values.append((now, value))

    def value(self, now: float) -> float | None:
        while len(self.values) > 1 and self.values[0][0] < now - self.window:
            self.values.popleft()
        return self.values[0][1] if self.values else None


class LoopLag:
    """How late this worker's event loop runs what is due: one timer per worker, every
    `LAG_PERIOD` seconds, started by the first request that needs it.

    A busy worker delays every answer it reads by its own lateness; without this, a worker
    at full CPU looks like a slow backend, and shrinking the limit would only lower what the
    worker can pass on.
    """

    def __init__(self) -> None:
        self.lateness = 0.0  # smoothed over the last ~0.1 s
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def mean(self) -> float:
        """The recent mean lateness, in seconds (the first call starts measuring)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()
        return self.lateness

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + LAG_PERIOD
        self._loop.call_later(LAG_PERIOD, self._tick)

    def _tick(self) -> None:
        late = max(0.0, time.monotonic() - self._due)
        self.lateness += (late - self.lateness) * 0.2
        self._schedule()


class GradientLimit:
    """The in-flight limit to one backend, following its latency (a gradient controller in
    the manner of Netflix's concurrency-limits, on a sliding minimum as in TCP Vegas).

    Answers are gathered per route over an interval (about one round trip, at least
    `MIN_SAMPLES` answers). Then, with `median` each route's median latency in the interval
    and `baseline` the route's sliding minimum of such medians (only medians from quiet
    intervals, at most `2 * floor` in flight, can raise it; a lower one always counts), and
    `lag` the worker's own event-loop lateness (`LoopLag`), which is not the backend's doing:

        excess   = max(0, median - baseline - LAG_FACTOR * lag)
        ratio    = mean over the interval's answers of (baseline + excess) / baseline
        gradient = clamp(tolerance / ratio, 0.5, 1)
        limit    = clamp(limit * gradient + sqrt(limit), floor, ceiling)

    only when at least half the limit was in use (an idle limit says nothing). While latency
    stays within `tolerance` times the baseline the limit grows by sqrt(limit) per interval up
    to the ceiling; past it the limit shrinks (at most halved per interval) to where latency
    is back within tolerance. Baselines per route, so a backend serving fast and slow
    endpoints is judged by how each slows down, not by their mix.
    """

    def __init__(
        self,
        *,
        floor: int,
        ceiling: int,
        tolerance: float = 2.0,
        window: float = 60.0,
        lag: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 1 <= floor <= ceiling and tolerance >= 1
        self.floor, self.ceiling, self.tolerance, self.window = floor, ceiling, tolerance, window
        self.clock = clock
        self.lag = lag
        self.value = float(ceiling)  # the static bound it replaces: no regression at start
        self.limit = ceiling
        self.baselines: dict[str, SlidingMinimum] = {}
        self._samples: dict[str, list[float]] = {}
        self._count = 0
        self._peak = 0
        self._began = clock()
        self._interval = MIN_INTERVAL

    def sample(self, route: str, seconds: float, inflight: int) -> None:
        """One answer from the backend that took `seconds`, with `inflight` requests out."""
        samples = self._samples.get(route)
        if samples is None:
            samples = self._samples[route] = []
        samples.append(seconds)
        self._count += 1
        if inflight > self._peak:
            self._peak = inflight
        if self._count >= MIN_SAMPLES:
            now = self.clock()
            if now - self._began >= self._interval:
                self._decide(now)

    def _decide(self, now: float) -> None:
        quiet = self._peak <= 2 * self.floor
        own = LAG_FACTOR * self.lag()
        weighted = 0.0
        longest = 0.0
        for route, samples in self._samples.items():
            samples.sort()
            median = samples[len(samples) // 2]
            baseline = self.baselines.get(route)
            if baseline is None:
                baseline = self.baselines[route] = SlidingMinimum(self.window)
            current = baseline.value(now)
            if quiet or current is None or median < current:
                baseline.add(median, now)
                current = baseline.value(now)
            assert current is not None
            excess = max(0.0, median - current - own)
            weighted += len(samples) * (current + excess) / max(current, 1e-6)
            longest = max(longest, median)
        gradient = min(1.0, max(0.5, self.tolerance * self._count / weighted))
        if 2 * self._peak >= self.value:
            grown = self.value * gradient + math.sqrt(self.value)
            self.value = min(float(self.ceiling), max(float(self.floor), grown))
            self.limit = int(self.value)
        self._samples, self._count, self._peak, self._began = {}, 0, 0, now
        self._interval = min(MAX_INTERVAL, max(MIN_INTERVAL, longest))


class Waiter:
    """One queued request: its future gets None (a slot is handed over) or a shed reason."""

    __slots__ = ("caller", "deadline", "enqueued", "future")

    def __init__(self, caller: str, enqueued: float, deadline: float) -> None:
        self.caller = caller
        self.enqueued = enqueued
        self.deadline = deadline
        self.future: asyncio.Future[ShedReason | None] = asyncio.get_running_loop().create_future()


class Admission:
    """One backend's slots, queue and limit, in one worker."""

    def __init__(
        self,
        backend: str,
        limit: GradientLimit,
        *,
        queue_limit: int,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer = loop_timer,
    ) -> None:
        self.backend = backend
        self.controller = limit
        self.queue_limit = queue_limit
        self.clock = clock
        self.timer = timer
        self.inflight = 0
        self.queued = 0
        self._queues: OrderedDict[str, deque[Waiter]] = OrderedDict()  # callers, in turn order
        self._counts: dict[str, int] = {}  # live waiters per caller (queues keep dead ones)
        self._deadlines: dict[float, deque[Waiter]] = {}  # per budget: in deadline order
        self._timer: Cancellable | None = None
        self._timer_at = math.inf

    @property
    def limit(self) -> int:
        return self.controller.limit

    def try_enter(self) -> bool:
        """Take a slot now if one is free and nobody waits for it (no barging past a queue)."""
        if self.inflight < self.controller.limit and not self.queued:
            self.inflight += 1
            return True
        return False

    async def enter(self, caller: str, budget: float) -> float:
        """Wait for a slot (after `try_enter` said no): the seconds waited, or `Shed`."""
        waiter = self._enqueue(caller, budget)
        try:
            reason = await waiter.future
        except asyncio.CancelledError:
            if waiter.future.cancelled():
                self._forget(waiter)
            elif waiter.future.result() is None:
                self.leave("", None)  # handed a slot as it was cancelled: pass it on
            raise
        if reason is not None:
            raise Shed(reason, self._shed_message(reason, budget))
        return self.clock() - waiter.enqueued

    def leave(self, route: str, seconds: float | None) -> None:
        """A request is done with its slot; `seconds` is its answer time (None: not a
        measure of the backend, e.g. it could not connect or the client left)."""
        if seconds is not None:
            self.controller.sample(route, seconds, self.inflight)
        self.inflight -= 1
        if self.queued:
            self._hand_on()

    def _enqueue(self, caller: str, budget: float) -> Waiter:
        mine = self._counts.get(caller, 0)
        if self.queued >= self.queue_limit:
            self._make_room(caller, mine)
        now = self.clock()
        waiter = Waiter(caller, now, now + budget)
        queue = self._queues.get(caller)
        if queue is None:
            queue = self._queues[caller] = deque()
        queue.append(waiter)
        self._counts[caller] = mine + 1
        self.queued += 1
        line = self._deadlines.get(budget)
        if line is None:
            line = self._deadlines[budget] = deque()
        while line and line[0].future.done():  # handed a slot long ago
            line.popleft()
        line.append(waiter)
        if waiter.deadline < self._timer_at:
            self._arm(waiter.deadline)
        return waiter

    def _make_room(self, caller: str, mine: int) -> None:
        """The queue is full: the caller with the most waiters gives up its newest one, or
        the newcomer is shed when its own caller is (about) that caller."""
        heaviest = max(self._counts, key=self._counts.__getitem__)
        most = self._counts[heaviest]
        if mine >= most - 1:
            raise Shed("queue_full", self._shed_message("queue_full", 0.0))
        queue = self._queues[heaviest]
        for waiter in reversed(queue):
            if not waiter.future.done():
                waiter.future.set_result("caller_share")
                self._forget(waiter)
                return

    def _hand_on(self) -> None:
        """Free slots go to waiters, one caller after another."""
        while self.queued and self.inflight < self.controller.limit:
            caller, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            if waiter.future.done():
                continue  # shed or cancelled: not counted any more
            waiter.future.set_result(None)
            self.inflight += 1
            self.queued -= 1
            left = self._counts[caller] - 1
            if left:
                self._counts[caller] = left
                self._queues.move_to_end(caller)  # its next waiter after every other caller's
            else:
                del self._counts[caller], self._queues[caller]

    def _forget(self, waiter: Waiter) -> None:
        """A waiter left the queue (shed or cancelled): uncount it and drop dead entries."""
        self.queued -= 1
        caller = waiter.caller
        left = self._counts[caller] - 1
        if not left:
            del self._counts[caller], self._queues[caller]
            return
        self._counts[caller] = left
        queue = self._queues[caller]
        while queue[0].future.done():
            queue.popleft()

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.timer(max(0.0, at - self.clock()), self.expire)

    def expire(self) -> None:
        """Shed the waiters whose budget is spent (the timer's callback)."""
        self._timer, self._timer_at = None, math.inf
        due = self.clock() + TIMER_SLACK
        earliest = math.inf
        for budget, line in list(self._deadlines.items()):
            while line and (line[0].future.done() or line[0].deadline <= due):
                waiter = line.popleft()
                if not waiter.future.done():
                    waiter.future.set_result("wait_budget")
                    self._forget(waiter)
            if line:
                earliest = min(earliest, line[0].deadline)
            else:
                del self._deadlines[budget]
        if earliest < math.inf:
            self._arm(earliest)

    def _shed_message(self, reason: ShedReason, budget: float) -> str:
        where = f"the {self.backend} backend"
        if reason == "wait_budget":
            return (
                f"no slot to {where} came free within this route's wait budget of {budget:g} s "
                f"({self.inflight} requests in flight in this worker); retry shortly "
                "(SHIM_QUEUE_TIMEOUT)"
            )
        if reason == "queue_full":
            return (
                f"{self.queued} requests already wait for {where} in this worker, and this "
                "caller has the most of them; retry shortly (SHIM_QUEUE_LIMIT)"
            )
        return (
            f"the queue for {where} is full and this caller had the most requests in it; "
            "retry shortly (SHIM_QUEUE_LIMIT)"
        )
