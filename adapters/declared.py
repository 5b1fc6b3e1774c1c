"""`adapter = "jq"`: an endpoint declared in the route table, translated by jq programs.

An operator writes what the two dialects differ by as jq programs, the language they already
use for JSON at the shell; no Python, no release. Four programs, each applied to a whole
body, each optional (a missing one means the shape is the same both ways):

    rust_request_to_go   a Rust-face client's request, when Go serves it
    go_answer_to_rust    Go's answer to it, on its way back to that client
    go_request_to_rust   a Go-face client's request, when Rust serves it
    rust_answer_to_go    Rust's answer to it, on its way back to that client

    >>> rerank = JqAdapter.declare(
    ...     "rerank", {"go_answer_to_rust": "{results: .ranking}"}, examples=[])
    >>> rerank.translate_response({"ranking": [1]}, client="rust", backend="go",
    ...                           options=None).body
    {'results': [1]}

Programs are compiled once, when the route table is read (a program that does not compile
is a configuration error), and the route's examples are run through them there too. jq is
the C library behind PyPI `jq`: in memory, no I/O, like numpy's kernels. It holds the GIL
while a program runs (measured: a thread running a one-second program let the loop tick
once), so a program runs on the loop, as every adapter does: a thread would buy nothing.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jq

from adapters.base import JSON_DIFF, Dialect, JSONObject, Translation, require_object
from adapters.errors import AdapterError, OptionsError

REQUEST_PROGRAM: Mapping[tuple[Dialect, Dialect], str] = {
    ("rust", "go"): "rust_request_to_go",
    ("go", "rust"): "go_request_to_rust",
}
"""(client, backend) -> the program that turns the client's request into the backend's."""
ANSWER_PROGRAM: Mapping[tuple[Dialect, Dialect], str] = {
    ("rust", "go"): "go_answer_to_rust",
    ("go", "rust"): "rust_answer_to_go",
}
"""(client, backend) -> the program that turns the backend's answer into the client's."""
PROGRAM_KEYS = (*REQUEST_PROGRAM.values(), *ANSWER_PROGRAM.values())
MAX_LOSSY_TEXT = 200
_LONG_DIGITS = re.compile(r"\d{20}")  # an integer that may not fit 64 bits


@dataclass(frozen=True, slots=True)
class Program:
    """One compiled jq program and where it was declared (`routes.NAME.jq.KEY`)."""

    where: str
    source: str
    compiled: Any = field(repr=False)  # jq's compiled program (the binding has no types)

    def run(self, body: Any) -> JSONObject:
        """The program's one output for `body`.

        Raises AdapterError naming the program when jq fails (`.ranking[]` on a null), or
        when it gives no output, several, or something other than an object. jq computes in
        doubles and prints a large one in full (1e300 as 301 digits): such an integer comes
        back as a float, so the answer can still be serialised.
        """
        try:
            text = self.compiled.input_text(json.dumps(body)).text()
        except ValueError as exc:  # the binding reports every jq runtime error so
            raise AdapterError(f"the jq program {self.where} failed: {exc}") from None
        outputs = text.split("\n") if text else []  # compact output: one value per line
        output = None
        if len(outputs) == 1:
            long = _LONG_DIGITS.search(outputs[0]) is not None  # rare: look only then
            output = json.loads(outputs[0], parse_int=_integer if long else None)
        if not isinstance(output, dict):
            found = f"{len(outputs)} values" if len(outputs) != 1 else _kind(output)
            raise AdapterError(
                f"the jq program {self.where} must give one JSON object, not {found}"
            )
        return output


class JqAdapter:
    """Translates one declared endpoint with its jq programs; built per route, not shared.

    Takes no `[routes.NAME.options]`: everything is in `[routes.NAME.jq]`. Compared by JSON
    diff in the client's dialect; what it loses is the route table's own words; every
    request of an idempotent method may be repeated; its probe samples are its request
    examples.
    """

    name = "jq"
    comparing = JSON_DIFF
    repeat_rule: str | None = None

    def __init__(
        self, route: str, programs: Mapping[str, Program], lossy: Mapping[str, str]
    ) -> None:
        self.route = route
        self.programs = dict(programs)
        self.lossy = dict(lossy)
        self.loss_descriptions: Mapping[str, str] = {text: text for text in self.lossy.values()}
        self.examples = 0  # how many examples were checked when it was declared
        self.requests: list[Mapping[Dialect, JSONObject]] = []  # the request examples

    @classmethod
    def declare(cls, route: str, table: Mapping[str, Any], *, examples: Sequence[Any]) -> JqAdapter:
        """Compile `[routes.ROUTE.jq]` and check `[[routes.ROUTE.examples]]` against it.

        Raises OptionsError whose `field` is relative to the route (`jq.go_answer_to_rust`,
        `examples`), so the caller can name the whole key.
        """
        unknown = set(table) - {*PROGRAM_KEYS, "lossy"}
        if unknown:
            known = ", ".join((*PROGRAM_KEYS, "lossy"))
            raise OptionsError(f"unknown key (known: {known})", field=f"jq.{sorted(unknown)[0]}")
        programs = {
            key: compile_program(f"routes.{route}.jq.{key}", table[key], field=f"jq.{key}")
            for key in PROGRAM_KEYS
            if key in table
        }
        adapter = cls(route, programs, parse_lossy(table.get("lossy", {})))
        adapter.examples = check_examples(adapter, examples)
        adapter.requests = [
            {"rust": example["rust"], "go": example["go"]}
            for example in examples
            if example["kind"] == "request"
        ]
        return adapter

    def parse_options(self, raw: Mapping[str, Any]) -> None:
        if raw:
            raise OptionsError(
                f"a jq endpoint takes no options: its programs go in [routes.{self.route}.jq]",
                field=sorted(raw)[0],
            )

    def needs_rewrite(self, *, client: Dialect, backend: Dialect, options: None) -> bool:
        """Across dialects, when a program or a declared loss applies to the pair."""
        if client == backend:
            return False
        keys = (REQUEST_PROGRAM[client, backend], ANSWER_PROGRAM[client, backend])
        return any(key in self.programs or key in self.lossy for key in keys)

    def compared_in(self, client: Dialect) -> Dialect:
        """The client's dialect: the programs that bring answers there are the ones it uses."""
        return client

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> JSONObject:
        request = require_object(body, what=f"{self.route} request")
        program = self.programs.get(REQUEST_PROGRAM[client, backend]) if client != backend else None
        return request if program is None else program.run(request)

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> Translation:
        if client == backend:
            return Translation(require_object(body, what=f"{self.route} answer"))
        program = self.programs.get(ANSWER_PROGRAM[client, backend])
        answer = require_object(body, what=f"{self.route} answer") if program is None else body
        translated = answer if program is None else program.run(answer)
        return Translation(translated, self.losses(client=client, backend=backend, options=None))

    def losses(self, *, client: Dialect, backend: Dialect, options: None) -> str | None:
        """What the route table declares lost for this pair (its request or answer program)."""
        if client == backend:
            return None
        keys = (REQUEST_PROGRAM[client, backend], ANSWER_PROGRAM[client, backend])
        lost = [self.lossy[key] for key in keys if key in self.lossy]
        return ", ".join(lost) or None

    def may_repeat(self, request: Any, *, client: Dialect, options: None) -> bool:
        return True

    def samples(self, count: int, *, client: Dialect, options: None) -> list[JSONObject]:
        """The route table's request examples in the client's dialect, in turn.

        >>> rerank = JqAdapter.declare("rerank", {}, examples=[
        ...     {"kind": "request", "rust": {"q": 1}, "go": {"q": 1}}])
        >>> rerank.samples(2, client="go", options=None)
        [{'q': 1}, {'q': 1}]
        """
        if not self.requests:
            return []
        return [dict(self.requests[i % len(self.requests)][client]) for i in range(count)]


def compile_program(where: str, source: Any, *, field: str) -> Program:
    """Compile once; a syntax error is an OptionsError carrying jq's own first line."""
    if not isinstance(source, str) or not source.strip():
        raise OptionsError("must be a jq program (a non-empty string)", field=field)
    try:
        compiled = jq.compile(source)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise OptionsError(f"does not compile: {first}", field=field) from None
    return Program(where, source, compiled)


def parse_lossy(table: Any) -> dict[str, str]:
    """`lossy.KEY = "what is lost"`: sent as X-Shim-Lossy, so it must be a header value."""
    if not isinstance(table, Mapping):
        raise OptionsError(
            'must be a table such as { go_answer_to_rust = "..." }', field="jq.lossy"
        )
    lossy = {}
    for key, text in table.items():
        where = f"jq.lossy.{key}"
        if key not in PROGRAM_KEYS:
            raise OptionsError(f"must name a program ({', '.join(PROGRAM_KEYS)})", field=where)
        if (
            not isinstance(text, str)
            or not 0 < len(text) <= MAX_LOSSY_TEXT
            or not all(" " <= char <= "~" for char in text)
        ):
            raise OptionsError(
                f"must say what is lost in up to {MAX_LOSSY_TEXT} printable ASCII characters "
                "(it is sent as the X-Shim-Lossy header)",
                field=where,
            )
        lossy[key] = text
    return lossy


@dataclass(frozen=True, slots=True)
class Direction:
    """One way an example is checked: `source` side in, `target` side expected out."""

    program: str
    source: Dialect
    target: Dialect


DIRECTIONS: Mapping[str, tuple[Direction, Direction]] = {
    "request": (
        Direction("rust_request_to_go", "rust", "go"),
        Direction("go_request_to_rust", "go", "rust"),
    ),
    "answer": (
        Direction("go_answer_to_rust", "go", "rust"),
        Direction("rust_answer_to_go", "rust", "go"),
    ),
}


def check_examples(adapter: JqAdapter, examples: Sequence[Any]) -> int:
    """Run every example both ways, one way only where a direction is declared lossy.

    An example is a pair of real bodies; a lossy direction cannot give what it loses (Rust
    never reports Go's `took_ms`), so its output is not held to the other side: only the
    reverse is checked. Examples are numbered from 1 in the order written; a failure names
    the program, the example and a diff of what came out against what was expected.
    """
    if not isinstance(examples, list):
        raise OptionsError("must be an array of tables [[routes.NAME.examples]]", field="examples")
    for number, example in enumerate(examples, start=1):
        where = f"example {number} of [[routes.{adapter.route}.examples]]"
        if not isinstance(example, Mapping) or set(example) != {"rust", "go", "kind"}:
            raise OptionsError(
                f'{where} must have exactly rust = {{...}}, go = {{...}} and kind = "request" or '
                '"answer"',
                field="examples",
            )
        kind = example["kind"]
        if kind not in DIRECTIONS:
            raise OptionsError(f'{where}: kind must be "request" or "answer"', field="examples")
        for direction in DIRECTIONS[kind]:
            if direction.program in adapter.lossy:
                continue
            _check(adapter, example, direction, f'{where} (kind = "{kind}")')
    return len(examples)


def _check(
    adapter: JqAdapter, example: Mapping[str, Any], direction: Direction, where: str
) -> None:
    source, expected = example[direction.source], example[direction.target]
    program = adapter.programs.get(direction.program)
    what = f"its {direction.source}"
    try:
        got: Any = source if program is None else program.run(source)
    except AdapterError as exc:
        raise OptionsError(
            f"{where}: {exc.message} on {what}", field=f"jq.{direction.program}"
        ) from None
    if not same_json(got, expected):
        how = "the program" if program is not None else "no program (same shape)"
        raise OptionsError(
            f"{where}: {how} turns {what} into something other than its {direction.target}:\n"
            + json_diff(expected, got, expected_name=f"expected (its {direction.target})"),
            field=f"jq.{direction.program}",
        )


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0 (jq prints 1.0 as 1), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def json_diff(expected: Any, got: Any, *, expected_name: str = "expected") -> str:
    """A unified diff of two JSON documents, pretty-printed with sorted keys."""
    before, after = (
        json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
        for document in (expected, got)
    )
    diff = difflib.unified_diff(before, after, fromfile=expected_name, tofile="got", lineterm="")
    return "\n".join(diff)


def _integer(text: str) -> int | float:
    """An integer as JSON parsers beyond jq expect it: exact within 64 bits, else a float."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")
