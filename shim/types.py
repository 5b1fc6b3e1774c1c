"""Shared vocabulary: backends, three-state outcomes, and the ASGI callable types. Imports
nothing of the shim."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from enum import StrEnum
from typing import Any, Literal

Backend = Literal["rust", "go"]
BACKENDS: tuple[Backend, ...] = ("rust", "go")

# How two answers to one request are compared (shim.parity.compare): an adapter names its own.
Comparator = Literal["cosine", "ranking", "json", "bytes"]


class Outcome(StrEnum):
    """A judgement with three states: a parity verdict, a guard check. A `StrEnum`, so JSON,
    logs and metrics carry the same bytes as the plain strings did (`"PASS"`)."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"  # too little evidence: neither promote nor roll back


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The server puts a DisconnectSignal in scope["extensions"] under this key
# (shim/serving/protocol.py).
DISCONNECT_EXTENSION = "shim.disconnect"


class DisconnectSignal:
    """One per connection: the tasks to cancel if the client goes away mid-request."""

    __slots__ = ("lost", "tasks")

    def __init__(self) -> None:
        self.lost = False
        self.tasks: set[asyncio.Task[None]] = set()

    def fire(self) -> None:
        self.lost = True
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
