"""The built-in adapters' names, as the route table spells them, mapped to their
implementations. An adapter of your own needs no entry here: the route table names it as
`package.module:ATTRIBUTE` (shim/routes.py imports it)."""

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
