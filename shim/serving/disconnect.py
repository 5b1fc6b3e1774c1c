"""A client that goes away: how the proxy notices and stops working for nobody.

An aborted request must release its upstream connection at once instead of reading on; the
pipeline turns that into `ClientDisconnected` (logged as 499, never answered).
"""

from __future__ import annotations

import asyncio

from shim.types import DISCONNECT_EXTENSION, DisconnectSignal, Receive, Scope


class ClientDisconnected(Exception):
    """The client went away before its request body was read (nothing to answer)."""


class CancelOnDisconnect:
    """Cancel the running request the moment its client disconnects, so an aborted request
    releases its upstream connection instead of reading on for nobody; the cancellation
    comes out as ClientDisconnected.

    Under `shim serve` the connection itself cancels us (a `DisconnectSignal` in the
    scope's extensions); elsewhere (tests, other servers) a watcher task waits for
    `http.disconnect`. A plain context manager: no coroutine layer on the hot path.
    """

    __slots__ = ("receive", "signal", "task", "watcher")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.signal: DisconnectSignal | None = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        if self.signal is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())
        elif self.signal.lost:
            raise ClientDisconnected
        else:
            self.signal.tasks.add(task)

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.task.cancel()

    def __exit__(self, kind: type[BaseException] | None, exc: object, _: object) -> None:
        if self.watcher is not None:
            disconnected = self.watcher.done() and not self.watcher.cancelled()
            self.watcher.cancel()
        else:
            assert self.signal is not None
            self.signal.tasks.discard(self.task)
            disconnected = self.signal.lost
        if kind is asyncio.CancelledError and disconnected and self.task.uncancel() == 0:
            raise ClientDisconnected from None
