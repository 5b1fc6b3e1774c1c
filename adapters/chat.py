"""`chat`: `/ai/chat` (Rust) <-> `/v1/chat` (Go).

Request, both: ``{"messages": [{"role", "content"}], "provider"?, "model"?}``.
Rust: ``{"reply": str, "provider": str, "usage": {"prompt_tokens", "completion_tokens"}}``.
Go:   ``{"content": str, "provider": str, "tokens": {"input", "output"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import (
    Dialect,
    JSONObject,
    RenamingAdapter,
    Translation,
    passthrough_fields,
    require,
    require_object,
)
from adapters.errors import ShapeError

TEXT_FIELD: Mapping[Dialect, str] = {"rust": "reply", "go": "content"}
COUNTS_FIELD: Mapping[Dialect, str] = {"rust": "usage", "go": "tokens"}
COUNT_NAMES: Mapping[Dialect, tuple[str, str]] = {
    "rust": ("prompt_tokens", "completion_tokens"),
    "go": ("input", "output"),
}


class ChatAdapter(RenamingAdapter):
    """Same request both ways; the answer's text and token counts are renamed."""

    name = "chat"

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> JSONObject:
        request = require_object(body, what="chat request")
        messages = require(request, "messages", list, "a list of messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise ShapeError(
                    "each message must be an object with a string content",
                    field=f"messages[{index}]",
                )
        return dict(request)

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> Translation:
        response = require_object(body, what="chat response")
        text = require(response, TEXT_FIELD[backend], str, "a string")
        counts_field = COUNTS_FIELD[backend]
        counts = require(response, counts_field, dict, "an object")
        source_names, target_names = COUNT_NAMES[backend], COUNT_NAMES[client]
        translated_counts: JSONObject = {}
        for source, target in zip(source_names, target_names, strict=True):
            value = require(counts, source, int, "an integer")
            translated_counts[target] = value
        translated_counts.update(passthrough_fields(counts, frozenset(source_names)))
        known = frozenset({TEXT_FIELD[backend], counts_field})
        translated: JSONObject = {
            TEXT_FIELD[client]: text,
            COUNTS_FIELD[client]: translated_counts,
            **passthrough_fields(response, known),
        }
        return Translation(translated)


CHAT = ChatAdapter()
