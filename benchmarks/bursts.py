"""N requests at once, each on its own connection: what a burst of clients gets back.

Raw asyncio streams, so the load generator costs less per request than the proxies it
measures (an aiohttp client costs more than the shim). `shim bench`'s burst and overload
scenarios use it, and so do the overload tests (tests/test_overload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass

from benchmarks.load import percentiles


@dataclass
class Burst:
    """What a burst of requests sent at once got back."""

    sent: int
    answered: int  # 2xx
    shed: int  # 503 `overloaded`, in the shim's JSON shape
    other: dict[str, int]  # anything else, by status (or "connect", "reset", "timeout")
    latency_ms: dict[str, float]  # percentiles of every answer, from its send to its end
    wall_s: float  # first send to last answer
    retry_after: int  # shed answers that carried Retry-After
    shed_ms: dict[str, float]  # percentiles of the shed answers alone


def burst(
    url: str,
    count: int,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    spread_s: float = 0.0,
    timeout_s: float = 30.0,
) -> Burst:
    """`count` requests on `count` connections: every connection opened first, then every
    request written at once (or evenly over `spread_s` seconds), then every answer read."""
    return asyncio.run(
        burst_async(url, count, body=body, headers=headers, spread_s=spread_s, timeout_s=timeout_s)
    )


async def burst_async(
    url: str,
    count: int,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    spread_s: float = 0.0,
    timeout_s: float = 30.0,
) -> Burst:
    """`burst` in a running loop (a test runs two callers' bursts side by side)."""
    from yarl import URL

    target = URL(url)
    host, port = target.host or "127.0.0.1", target.port or 80
    payload = (body or "").encode()
    head = f"{'GET' if body is None else 'POST'} {target.raw_path_qs} HTTP/1.1\r\n"
    head += f"Host: {host}:{port}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    request = head.encode() + b"\r\n" + payload
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    shed_latencies: list[float] = []
    retry_after = 0
    first_sent = last_done = 0.0
    start = asyncio.Event()
    unopened = count

    def opened() -> None:
        nonlocal unopened
        unopened -= 1
        if not unopened:
            start.set()

    def outcome(name: str) -> None:
        outcomes[name] = outcomes.get(name, 0) + 1

    async def one(index: int) -> None:
        nonlocal retry_after, first_sent, last_done
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            outcome("connect")
            return
        finally:
            opened()
        try:
            await start.wait()
            if spread_s:
                await asyncio.sleep(spread_s * index / count)
            sent = time.perf_counter()
            first_sent = min(first_sent or sent, sent)
            writer.write(request)
            async with asyncio.timeout(timeout_s):
                status_line = await reader.readline()
                answer_headers = (await reader.readuntil(b"\r\n\r\n")).lower()
                length = re.search(rb"content-length: *(\d+)", answer_headers)
                content = await reader.readexactly(int(length.group(1))) if length else b""
            done = time.perf_counter()
            latencies.append(done - sent)
            last_done = max(last_done, done)
            status = int(status_line.split()[1])
            if 200 <= status < 300:
                outcome("answered")
            elif status == 503 and b'"overloaded"' in content:
                outcome("shed")
                shed_latencies.append(done - sent)
                retry_after += b"retry-after:" in answer_headers
            else:
                outcome(str(status))
        except TimeoutError:
            outcome("timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            outcome("reset")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()  # closed before the loop is: no socket left behind

    await asyncio.gather(*(one(i) for i in range(count)))
    return Burst(
        sent=count,
        answered=outcomes.pop("answered", 0),
        shed=outcomes.pop("shed", 0),
        other=outcomes,
        latency_ms=_tenths(percentiles(latencies)),
        wall_s=round(last_done - first_sent, 3) if last_done else 0.0,
        retry_after=retry_after,
        shed_ms=_tenths(percentiles(shed_latencies)),
    )


def _tenths(milliseconds: dict[str, float]) -> dict[str, float]:
    """A burst reports its percentiles to a tenth of a millisecond."""
    return {p: round(ms, 1) for p, ms in milliseconds.items()}
