"""Shared vocabulary: backends, and the ASGI callable types. Imports nothing of the shim."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

Backend = Literal["rust", "go"]
BACKENDS: tuple[Backend, ...] = ("rust", "go")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
