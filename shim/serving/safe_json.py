"""JSON parsed with the client's and the backend's faults told apart.

orjson refuses NaN/Infinity, bad UTF-8, lone surrogates and deep nesting; an integer beyond
64 bits it would silently turn into a float, so a client's body is searched for one first.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shim.errors import BadBackendAnswer, BadRequest


def parse_json(raw: bytes, *, side: str) -> Any:
    """Parse with orjson (rejects NaN/Infinity, bad UTF-8, lone surrogates, deep nesting).

    A client's bad JSON is a 400; a backend's is a 502.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if side == "client":
            raise BadRequest(f"request body is not valid JSON: {exc}", code="bad_json") from None
        raise BadBackendAnswer(f"the {side} backend's answer is not valid JSON: {exc}") from None
    if side == "client" and (huge := huge_integer(raw)):
        raise BadRequest(
            f"request body has an integer beyond 64 bits ({huge[:24]}…): it cannot be passed "
            "on exactly; send it as a string",
            code="bad_json",
        )
    return document


_STRING_OR_LONG_NUMBER = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])')


def huge_integer(raw: bytes) -> str | None:
    """An integer literal orjson would silently turn into a float (beyond 64 bits), if any.

    Only client bodies are checked (they are small); strings are skipped whole.
    """
    for found in _STRING_OR_LONG_NUMBER.finditer(raw):
        token = found.group()
        if token[:1] != b'"' and not -(2**63) <= int(token) < 2**64:
            return token.decode()
    return None
