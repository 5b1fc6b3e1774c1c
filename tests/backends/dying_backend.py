"""A keep-alive backend that fails the way a crashing backend does, for the pool's tests.

Serves any number of requests per connection (HTTP/1.1 keep-alive, Content-Length bodies).
A request with `X-Test-Fault: error-then-reset` is answered `500` *without* saying it will
close, then, `X-Test-Delay` seconds later (default 0.3), the connection is reset — what
uvicorn does after an app's exception, made slow enough that a reused connection fails.
`X-Test-Fault: error` is a plain-text 500 that keeps the connection (a backend whose every
answer is a stack trace); `X-Test-Fault: reset-next` answers normally and then resets the
connection when the next request arrives on it, without a word (a pooled connection the
backend has already given up on). Anything else gets a small JSON answer.
`GET /__stats` counts requests, resets and connections.
Run: python dying_backend.py PORT
"""

import asyncio
import json
import sys

stats = {"requests": 0, "resets": 0, "connections": 0}


def answer(status: int, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Internal Server Error"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, reason, len(body)) + body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    stats["connections"] += 1
    reset_next = False
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1].decode()
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                name, value = line.split(b":", 1)
                headers[name.strip().lower()] = value.strip().decode()
        length = int(headers.get(b"content-length", "0"))
        if length:
            await reader.readexactly(length)
        if path == "/__stats":
            writer.write(answer(200, json.dumps(stats).encode()))
            await writer.drain()
            continue
        if reset_next:
            stats["resets"] += 1
            writer.transport.abort()
            return
        stats["requests"] += 1
        fault = headers.get(b"x-test-fault")
        if fault == "error":
            writer.write(answer(500, b"Traceback (most recent call last): ..."))
            await writer.drain()
            continue
        if fault == "error-then-reset":
            writer.write(answer(500, b'{"error": "boom"}'))
            await writer.drain()
            await asyncio.sleep(float(headers.get(b"x-test-delay", "0.3")))
            stats["resets"] += 1
            writer.transport.abort()
            return
        body = json.dumps({"reply": "ok", "provider": "dying", "path": path}).encode()
        writer.write(answer(200, body))
        await writer.drain()
        reset_next = fault == "reset-next"


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
