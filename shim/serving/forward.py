"""The mechanism of one attempt on one backend: stream the bytes, or translate once.

Same-dialect traffic streams both ways untouched (only the path changes); a route that needs
a rewrite parses the client's JSON once, translates it with its adapter, sends it, and
translates the answer back into one message. Which backend, and whether a failed attempt
may be made again, are the pipeline's policy (`shim.serving.proxy.Proxy`), asked through
`_replayable` and `_may_fall_back`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import orjson
from yarl import URL

from adapters.errors import AdapterError
from shim import headers as header_policy
from shim import metrics
from shim.cutover.fallback import FallbackStatus
from shim.errors import BadBackendAnswer, BadRequest
from shim.routes import RouteMatch
from shim.serving.backend_url import backend_url
from shim.serving.bodies import read_backend_body
from shim.serving.exchange import Call, Exchange
from shim.serving.safe_json import parse_json
from shim.serving.upstream import Upstream, translate_errors
from shim.serving.vector_wire import answer_codec
from shim.types import Backend, Scope, Send

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class Forwarder:
    """Sends one attempt to a backend and answers the client; subclassed by the pipeline.

    A base class rather than callbacks handed in per request: the policy is asked through
    two methods the subclass defines, so an attempt builds no extra objects on the hot path.
    """

    upstream: Upstream
    max_backend_json_bytes: int

    def _replayable(self, call: Call, *, count: bool = False) -> bool:
        """May this request be sent again (the pipeline's policy)."""
        raise NotImplementedError

    def _may_fall_back(self, call: Call) -> bool:
        """May a failed attempt be made again on the other backend (the pipeline's policy)."""
        raise NotImplementedError

    def _url(self, match: RouteMatch, backend: Backend, scope: Scope) -> URL:
        """Where this request goes on `backend` (`shim.serving.backend_url`)."""
        return backend_url(
            self.upstream.base_urls[backend],
            match.route.faces[backend],
            match.params,
            scope.get("query_string") or b"",
        )

    async def _stream(self, call: Call, backend: Backend) -> None:
        """Bytes in, bytes out: nothing is parsed or buffered whole (a shadow keeps a copy,
        capped)."""
        ex, body, capture = call.ex, call.body, call.capture
        url = self._url(call.match, backend, call.scope)
        forward = call.request.forward
        if not isinstance(body, bytes | None) and call.request.content_length is not None:
            # The body is passed on unchanged, so the client's length still frames it.
            forward = [*forward, ("Content-Length", str(call.request.content_length))]
        route = call.match.route
        with translate_errors(backend, url):
            response = await self.upstream.send(
                backend,
                route,
                ex.method,
                url,
                headers=forward,
                data=body,
                replayable=functools.partial(self._replayable, call),
            )
        try:
            if response.status in route.fallback_on and self._may_fall_back(call):
                raise FallbackStatus(response.status)
            response_headers = header_policy.backend_response(
                response.raw_headers,
                rewrite=False,
            )
            response_headers += header_policy.shim_headers(
                ex.request_id, ex.endpoint, backend, ex.fallback
            )
            ex.status = response.status
            ex.response_started = True
            if capture is not None:
                capture.primary_status = response.status
                capture.primary_encoding = response.headers.get("Content-Encoding", "identity")
            content = response.content
            whole = None
            if content.is_eof():  # a small answer is usually whole by now: one message
                with translate_errors(backend, url):
                    whole = content.read_nowait()
            await call.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers,
                }
            )
            if whole is not None:
                ex.bytes_out = len(whole)
                if capture is not None:
                    capture.keep_answer(whole)
                await call.send({"type": "http.response.body", "body": whole})
                return
            with translate_errors(backend, url):
                async for chunk in content.iter_any():
                    ex.bytes_out += len(chunk)
                    if capture is not None:
                        capture.keep_answer(chunk)
                    await call.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
            await call.send({"type": "http.response.body", "body": b""})
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()  # a half-read connection never goes back to the pool

    async def _translate(self, call: Call, backend: Backend) -> None:
        """Parse once, translate, send, translate the answer back, answer in one message."""
        ex, match, capture = call.ex, call.match, call.capture
        route, client = match.route, match.client
        assert route.adapter is not None
        ex.translated = True
        metrics.count(metrics.TRANSLATIONS, route.name, f"{client}->{backend}")
        raw = call.body if isinstance(call.body, bytes) else b""
        document = parse_json(raw, side="client")
        try:
            translated = route.adapter.translate_request(
                document, client=client, backend=backend, options=route.options
            )
        except AdapterError as exc:
            raise BadRequest(_adapter_message("request", exc), code="bad_shape") from None
        payload = orjson.dumps(translated, option=JSON_OPTIONS)
        url = self._url(match, backend, call.scope)
        forward = header_policy.for_rewrite(call.request.forward)
        with translate_errors(backend, url):
            response = await self.upstream.send(
                backend,
                route,
                ex.method,
                url,
                headers=forward,
                data=payload,
                replayable=functools.partial(self._replayable, call),
            )
            try:
                answer = await read_backend_body(response, limit=self.max_backend_json_bytes)
            finally:
                response.release()  # read whole, or failed: aiohttp closes a broken one
            raw_headers = response.raw_headers
            status = response.status
        if status in route.fallback_on and self._may_fall_back(call):
            raise FallbackStatus(status)
        if capture is not None:
            capture.keep_answer(answer)
            capture.primary_status = status
        extra = header_policy.shim_headers(ex.request_id, ex.endpoint, backend, ex.fallback)
        if not 200 <= status < 300:
            # The backend's own error, in its own words: passed on, not translated.
            response_headers = header_policy.backend_response(
                raw_headers,
                rewrite=True,
            )
            response_headers += [(b"content-length", str(len(answer)).encode()), *extra]
            content_type = raw_header(raw_headers, b"content-type")
            if content_type:
                response_headers.append((b"content-type", content_type))
            await self._send_whole(call.send, ex, status, response_headers, answer)
            return
        codec = answer_codec(route.adapter)
        try:
            if codec is not None:  # parses and writes the answer itself (embed: simdjson)
                body, lossy = codec(
                    route.adapter,
                    answer,
                    client=client,
                    backend=backend,
                    options=route.options,
                    slow=functools.partial(parse_json, side=backend),
                )
            else:
                result = route.adapter.translate_response(
                    parse_json(answer, side=backend),
                    client=client,
                    backend=backend,
                    options=route.options,
                )
                body, lossy = orjson.dumps(result.body, option=JSON_OPTIONS), result.lossy
        except AdapterError as exc:
            raise BadBackendAnswer(
                f"the {backend} backend's answer {_adapter_message('response', exc)}"
            ) from None
        response_headers = header_policy.backend_response(
            raw_headers,
            rewrite=True,
        )
        response_headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        if lossy:
            response_headers.append((b"x-shim-lossy", lossy.encode()))
        await self._send_whole(call.send, ex, status, response_headers, body)

    @staticmethod
    async def _send_whole(
        send: Send, ex: Exchange, status: int, headers: header_policy.RawHeaders, body: bytes
    ) -> None:
        ex.status, ex.bytes_out, ex.response_started = status, len(body), True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _adapter_message(what: str, exc: AdapterError) -> str:
    where = f" (at {exc.field})" if exc.field and exc.field not in exc.message else ""
    return f"{what} has the wrong shape: {exc.message}{where}"


def raw_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
