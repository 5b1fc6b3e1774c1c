"""A backend that misbehaves below HTTP: it reads a request, then by `X-Test-Fault`:

reset      close the connection without a word
garbage    answer bytes that are not HTTP
truncate   promise 100 bytes of body, send 10, close
hang       say nothing, keep the connection open
anything else: a normal small JSON answer.  Run: python raw_faulty.py PORT
"""

import asyncio
import sys

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if length:
        await reader.readexactly(length)
    fault = headers.get(b"x-test-fault", b"").decode()
    if fault == "reset":
        writer.transport.abort()
        return
    if fault == "garbage":
        writer.write(b"SPAM SPAM SPAM\r\n\r\n")
    elif fault == "truncate":
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"partial":'
        )
    elif fault == "hang":
        await asyncio.sleep(3600)
    else:
        writer.write(OK)
    await writer.drain()
    writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
