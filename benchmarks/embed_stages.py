"""Where an embed rewrite's CPU goes, stage by stage, warm and cold.

    .venv/bin/python -m benchmarks.embed_stages [--texts 8] [--dim 768] [--calls 600]
        [--thrash-mib 1]

For each direction (normalising: a Go answer for a Rust-face client; rename-only: a Rust
answer for a Go-face client), on answers written as the gateways write them (float32
shortest text, `benchmarks.embed_rewrite.answers`), the median thread CPU time of:

- `parse`: the simdjson parse alone (`vector_wire._parse`), the floor of reading the answer;
- `load`: the parse into a document with the vector matrix, every fast-path check made
  (`vector_wire.load_vectors`);
- `translate`: the adapter on that document (`EmbedAdapter.translate_response`: checks,
  and for a Rust face the float32 normalisation);
- `write`: the answer's bytes from the translation (orjson, or the splice when the numbers
  did not change);
- `whole`: `vector_wire.embed_answer`, all of it in one call;
- `floor`: parse plus, when the numbers change, orjson writing the float32 matrix alone:
  what the C libraries cost whatever Python does around them.

"warm" calls the stage over and over (the micro-benchmark's view); "cold" touches
`--thrash-mib` (1 MiB) of other memory before each call, as a worker's other work does
between two answers while the backend and the load generator share its cores. In `shim
serve` under `shim bench`'s load the stages cost what the cold column says (thread CPU time
measured once inside the worker: normalising load 140, translate 63, write 132 us; this
script's cold column then: 137, 54, 141).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from adapters.embed import EMBED, VECTORS_FIELD, EmbedOptions
from benchmarks.embed_rewrite import answers
from shim.serving import vector_wire

OPTIONS = EmbedOptions(default_model={"rust": "r", "go": "g"})


def median_us(call: Callable[[], Any], calls: int, thrash: np.ndarray | None) -> float:
    """The median thread CPU time of one call, in microseconds."""
    times = []
    for _ in range(calls):
        if thrash is not None:
            thrash.sum()
        started = time.thread_time_ns()
        call()
        times.append(time.thread_time_ns() - started)
    return statistics.median(times) / 1000


def stages(raw: bytes, client: str, backend: str) -> dict[str, Callable[[], Any]]:
    field, client_field = VECTORS_FIELD[backend], VECTORS_FIELD[client]
    document = vector_wire.load_vectors(raw, field)
    assert document is not None, "the fast path must take a gateway-style answer"
    result = EMBED.translate_response(document, client=client, backend=backend, options=OPTIONS)
    unchanged = result.body[client_field] is document[field]

    def parse() -> None:
        vector_wire._parse(raw)

    def write() -> bytes | None:
        if unchanged:
            return vector_wire.splice(raw, document, field, result.body, client_field)
        return orjson.dumps(result.body, option=vector_wire.JSON_OPTIONS)

    matrix = result.body[client_field]

    def floor() -> None:
        vector_wire._parse(raw)
        if not unchanged:
            orjson.dumps(matrix, option=vector_wire.JSON_OPTIONS)

    return {
        "parse": parse,
        "load": lambda: vector_wire.load_vectors(raw, field),
        "translate": lambda: EMBED.translate_response(
            document, client=client, backend=backend, options=OPTIONS
        ),
        "write": write,
        "whole": lambda: vector_wire.embed_answer(
            EMBED, raw, client=client, backend=backend, options=OPTIONS, slow=orjson.loads
        ),
        "floor": floor,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--thrash-mib", type=float, default=1.0, help="memory touched (cold)")
    args = parser.parse_args()
    thrash = np.ones(int(args.thrash_mib * 1024 * 1024) // 8)
    names = ("parse", "load", "translate", "write", "whole", "floor")
    print(f"{args.texts}x{args.dim}, median thread CPU us per answer")
    print(f"{'direction':<30} {'':>5} " + " ".join(f"{name:>9}" for name in names))
    for direction, (raw, client, backend) in answers(args.texts, args.dim).items():
        calls = stages(raw, client, backend)
        for label, pressure in (("warm", None), ("cold", thrash)):
            row = [median_us(calls[name], args.calls, pressure) for name in names]
            print(f"{direction:<30} {label:>5} " + " ".join(f"{us:>9.1f}" for us in row))


if __name__ == "__main__":
    main()
