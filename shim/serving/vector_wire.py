"""Embed answers at the byte level: vectors parsed straight into numpy, unchanged numbers spliced.

The embed rewrite is the seed's main traffic, and orjson's Python floats cost most of it
(`orjson.loads` + `np.array` + `orjson.dumps` ~300 us for 8x768). Here a backend's answer is
parsed once with simdjson, whose `as_buffer` hands the whole vector matrix to numpy without a
Python float; the adapter (`adapters.embed`, pure, numpy only) validates and translates it as
before; then the answer is written once:

- the adapter changed the numbers (normalised): orjson writes the new matrix;
- it did not (rename only, or rows already unit): the backend's own text for the vectors is
  passed on as it came, between a head and a tail re-written with the renamed keys. That
  splice is taken only when the rest of the answer is byte-for-byte what orjson writes for its
  parsed values, so the region left over can only be the vectors' text (and whitespace).

Anything the fast parse does not take as it is (not an object, a `null` or a string among the
numbers, ragged or nested rows, duplicate keys, integers beyond 64 bits, bad UTF-8) goes the
slow way, orjson and the same adapter, whose errors name the field (502 at the proxy).

A simdjson parser is not thread-safe and refuses to parse again while a document it returned
is alive: one parser per thread, and nothing of a document outlives `_load`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import simdjson

from adapters.base import Adapter, Dialect
from adapters.embed import VECTORS_FIELD

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_WHITESPACE = b" \t\r\n"
_OPEN_BRACKET = ord("[")
_FAST_ERRORS = (ValueError, TypeError, RuntimeError, KeyError, UnicodeDecodeError)

SlowParse = Callable[[bytes], Any]
AnswerCodec = Callable[..., tuple[bytes, str | None]]


class _Parsers(threading.local):
    """One simdjson parser per thread (shadow comparisons of big bodies run in threads)."""

    def __init__(self) -> None:
        self.parser = simdjson.Parser()


_parsers = _Parsers()


def load_vectors(raw: bytes, field: str) -> dict[str, Any] | None:
    """The answer as a dict whose `field` is a float64 matrix (n, d), in the document's key
    order; None when the fast parse does not take it as it is (then parse it the slow way).

    >>> load_vectors(b'{"vectors":[[3,4]],"dimension":2}', "vectors")
    {'vectors': array([[3., 4.]]), 'dimension': 2}
    >>> load_vectors(b'{"vectors":[[3,4],[5]],"dimension":2}', "vectors") is None  # ragged
    True
    """
    try:
        loaded = _load(raw, field)
    except _FAST_ERRORS:
        return None
    if loaded is None:
        return None
    document, rows = loaded
    # as_buffer flattens nested rows too ([[[1],2]] reads as [[1,2]]): the vectors' text holds
    # exactly one '[' per row and one around them all, and orjson writes every other '['
    # of the answer (in strings too) as it came; a count that differs goes the slow way.
    brackets = np.count_nonzero(np.frombuffer(raw, np.uint8) == _OPEN_BRACKET)
    rest = {key: value for key, value in document.items() if key != field}
    if brackets != rows + 1 + orjson.dumps(rest).count(b"["):
        return None
    return document


def _load(raw: bytes, field: str) -> tuple[dict[str, Any], int] | None:
    """Parse; every simdjson object dies with this frame, so the parser can parse again."""
    parsed = _parse(raw)
    if not isinstance(parsed, simdjson.Object):
        return None
    document: dict[str, Any] = {}
    for key in parsed:
        value = parsed[key]
        if isinstance(value, simdjson.Object):
            document[key] = value.as_dict()
        elif isinstance(value, simdjson.Array):
            document[key] = value if key == field else value.as_list()
        else:
            document[key] = value
    if len(document) != len(parsed):
        return None  # duplicate keys: orjson keeps the last, simdjson the first
    vectors = document.get(field)
    if not isinstance(vectors, simdjson.Array):
        return None
    rows = len(vectors)
    flat = np.frombuffer(vectors.as_buffer(of_type="d"), dtype=np.float64)
    if rows:
        dimension = flat.size // rows
        for row in vectors:  # as_buffer flattens ragged rows silently
            if not isinstance(row, simdjson.Array) or len(row) != dimension:
                return None
        if flat.size != rows * dimension:
            return None
        document[field] = flat.reshape(rows, dimension)
    else:
        document[field] = np.zeros((0, 0), dtype=np.float64)
    return document, rows


def _parse(raw: bytes) -> Any:
    try:
        return _parsers.parser.parse(raw)
    except RuntimeError as exc:
        if "re-use a parser" not in str(exc):
            raise
        # A document of the last parse is still referenced somewhere (an exception's
        # traceback, say): leave that parser to it and use a fresh one.
        _parsers.parser = simdjson.Parser()
        return _parsers.parser.parse(raw)


def splice(
    raw: bytes, document: dict[str, Any], field: str, answer: dict[str, Any], client_field: str
) -> bytes | None:
    """`answer` (whose `client_field` holds `document[field]` unchanged) written with the
    vectors' original text first; None unless the rest of `raw` is exactly orjson's text for the
    parsed `document` (compact, orjson's escapes and numbers, optional outer whitespace).

    >>> raw = b'{"vectors":[[0.6,0.8]],"dimension":2}\\n'
    >>> doc = load_vectors(raw, "vectors")
    >>> answer = {"embeddings": doc["vectors"], "dimensions": 2}
    >>> splice(raw, doc, "vectors", answer, "embeddings")
    b'{"embeddings":[[0.6,0.8]],"dimensions":2}'
    """
    keys = list(document)
    at = keys.index(field)
    before = {key: document[key] for key in keys[:at]}
    after = {key: document[key] for key in keys[at + 1 :]}
    head = orjson.dumps(before)[:-1] + (b',"' if before else b'"') + field.encode() + b'":'
    tail = _tail(after)
    start, end = 0, len(raw)
    while start < end and raw[start] in _WHITESPACE:
        start += 1
    while end > start and raw[end - 1] in _WHITESPACE:
        end -= 1
    begin, finish = start + len(head), end - len(tail)
    if finish <= begin or not raw.startswith(head, start) or not raw.endswith(tail, 0, end):
        return None
    # The vectors hold no string: a '"' in between means the rest of the answer was not
    # written as orjson writes it after all.
    if raw.find(b'"', begin, finish) != -1:
        return None
    rest = {key: value for key, value in answer.items() if key != client_field}
    head = b'{"' + client_field.encode() + b'":'
    return b"".join((head, memoryview(raw)[begin:finish], _tail(rest)))


def _tail(members: dict[str, Any]) -> bytes:
    """`,"a":1,"b":2}` for some members, `}` for none."""
    return b"," + orjson.dumps(members)[1:] if members else b"}"


def embed_answer(
    adapter: Adapter,
    raw: bytes,
    *,
    client: Dialect,
    backend: Dialect,
    options: Any,
    slow: SlowParse,
) -> tuple[bytes, str | None]:
    """A backend's embed answer in the client's dialect, as bytes, and what it lost.

    Raises AdapterError for a wrong shape, and whatever `slow` raises for bad JSON."""
    field = VECTORS_FIELD[backend]
    document = load_vectors(raw, field)
    result = adapter.translate_response(
        slow(raw) if document is None else document,
        client=client,
        backend=backend,
        options=options,
    )
    client_field = VECTORS_FIELD[client]
    if document is not None and result.body[client_field] is document[field]:
        spliced = splice(raw, document, field, result.body, client_field)
        if spliced is not None:
            return spliced, result.lossy
    return orjson.dumps(result.body, option=JSON_OPTIONS), result.lossy


def parse_answer(adapter: Adapter, raw: bytes, backend: Dialect) -> Any:
    """A backend's answer parsed for `adapter` (embed: vectors as a matrix); raises
    orjson.JSONDecodeError when it is not JSON."""
    if adapter.name in CODECS:
        document = load_vectors(raw, VECTORS_FIELD[backend])
        if document is not None:
            return document
    return orjson.loads(raw)


CODECS: dict[str, AnswerCodec] = {"embed": embed_answer}
"""Adapters whose answers have a byte-level path, by name (the others: orjson, adapter, orjson)."""


def answer_codec(adapter: Adapter) -> AnswerCodec | None:
    return CODECS.get(adapter.name)
