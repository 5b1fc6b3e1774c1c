"""What a jq program costs the event loop, per answer, against a built-in Python adapter.

    .venv/bin/python benchmarks/jq_cost.py

In process, no HTTP: the shipped rerank's go_answer_to_rust (jq) and retrieve's Python
adapter on answers of similar size, then jq on larger answers to show where a program starts
to hold the loop for a noticeable time. Both run on the loop; the jq binding holds the GIL
while a program runs, so a thread would not free the loop (the last line shows it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from shim.route_config import load_routes
from shim.settings import PROJECT_ROOT

ROUTES = load_routes(PROJECT_ROOT / "config" / "routes.toml")


def per_call_us(function: Callable[[], Any], seconds: float = 1.0) -> float:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls * 1e6


def rerank_answer(n: int) -> dict[str, Any]:
    return {"ranking": [{"doc": i, "score": 1 / (i + 1)} for i in range(n)], "took_ms": 0.4}


def retrieve_answer(n: int) -> dict[str, Any]:
    return {"hits": [{"id": f"w-{i:03d}", "distance": i / 100, "text": "x"} for i in range(n)]}


def main() -> None:
    rerank, retrieve = ROUTES["rerank"].adapter, ROUTES["retrieve"].adapter
    assert rerank is not None and retrieve is not None
    for n in (3, 10, 1_000, 10_000):
        ours, theirs = rerank_answer(n), retrieve_answer(n)  # adapters never mutate them
        seconds = 1.0 if n < 1000 else 3.0
        jq_us = per_call_us(
            lambda a=ours: rerank.translate_response(a, client="rust", backend="go", options=None),
            seconds,
        )
        python_us = per_call_us(
            lambda a=theirs: retrieve.translate_response(
                a, client="rust", backend="go", options=None
            ),
            seconds,
        )
        print(f"{n:>6} hits: jq {jq_us:10.1f} us   built-in Python {python_us:10.1f} us")
    big = rerank_answer(100_000)
    ticks = 0

    def run() -> None:
        rerank.translate_response(big, client="rust", backend="go", options=None)

    thread = threading.Thread(target=run)
    started = time.perf_counter()
    thread.start()
    while thread.is_alive():
        ticks += 1
        time.sleep(0.001)
    took = time.perf_counter() - started
    print(
        f"in a thread: {took * 1000:.0f} ms of jq, the loop thread woke {ticks} times (1 ms sleeps)"
    )


if __name__ == "__main__":
    main()
