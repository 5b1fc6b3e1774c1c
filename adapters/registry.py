"""Adapter names, as the route table spells them, mapped to their implementations."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.base import Adapter
from adapters.chat import CHAT
from adapters.embed import EMBED
from adapters.search import RETRIEVE, VECTORS_SEARCH
from adapters.sql import SQL

ADAPTERS: Mapping[str, Adapter] = {
    adapter.name: adapter for adapter in (EMBED, VECTORS_SEARCH, RETRIEVE, SQL, CHAT)
}

LOSS_DESCRIPTIONS: Mapping[str, str] = {
    "magnitude": "raw vector magnitudes (Rust answers only unit-L2 vectors)",
    "column-types": 'column types (Rust does not report them; sent as "unknown")',
}
