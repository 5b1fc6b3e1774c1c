"""A small etcd v3 client over etcd's HTTP/JSON gateway (`/v3/kv/*`, `/v3/watch`, leases).

Why the gateway and not a gRPC client library: the shim already depends on httpx, which
gives one client for the synchronous CLI and writers and for the asyncio workers; the
gateway answered a watch in ~1 ms on loopback against aetcd's ~0.75 ms (field notes), far
inside the 1 s a flip may take; it is part of etcd itself on 3.4 and 3.5, so there is no
library to be abandoned (the old `etcd3` package no longer imports with a current
protobuf) and no grpcio wheel (~10 MB, threads of its own in every worker).

Keys and values travel base64-encoded; proto3 JSON leaves out fields at their zero value
(`"succeeded"` absent means false, an absent `mod_revision` is 0). Every failure to reach
etcd — refused, timed out, an error answer from a cluster without quorum — is translated
here, at one boundary, into `FlagStoreUnavailable`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from shim.errors import FlagStoreUnavailable

log = logging.getLogger("shim.etcd")

# gRPC status codes etcd answers with; everything else is a request mistake of ours.
_UNAUTHENTICATED = 16
_NOT_FOUND = 5


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


class EtcdError(Exception):
    """etcd answered with an error that is not about reaching it (a bug, or auth)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code


class Etcd:
    """One etcd cluster (several endpoints: the next one is tried when one fails)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        timeout: float = 1.0,
    ) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.username, self.password = username, password
        self.verify: str | bool = str(ca_file) if ca_file else True
        self.timeout = timeout
        # One pool shared by the caller's threads (httpx.Client is thread-safe).
        self._client = httpx.Client(timeout=self.timeout, verify=self.verify)
        self._async: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._first = 0  # the endpoint that answered last

    def describe(self) -> str:
        return ",".join(self.endpoints)

    # -- synchronous (CLI, writers, heartbeats in threads) -------------------------------

    def call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v3/<method>; the decoded answer. FlagStoreUnavailable when no endpoint
        answers or etcd refuses our credentials."""
        try:
            return self._call(method, body)
        except EtcdError as exc:
            raise refused(self, exc) from None

    def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        failure: str = "no endpoint configured"
        for attempt in range(2):  # the second only after re-authenticating
            for endpoint in self._order():
                try:
                    response = self._client.post(
                        f"{endpoint}/v3/{method}", json=body, headers=self._headers(endpoint)
                    )
                except httpx.HTTPError as exc:
                    failure = f"{endpoint}: {type(exc).__name__} {exc}".rstrip()
                    continue
                try:
                    return self._answer(response)
                except EtcdError as exc:
                    if exc.code == _UNAUTHENTICATED and self.username and attempt == 0:
                        self._token = None
                        break
                    raise
                except FlagStoreUnavailable as exc:
                    failure = f"{endpoint}: {exc.message}"
                    continue
            else:
                break
        raise unavailable(self, failure)

    def _order(self) -> list[str]:
        return self.endpoints[self._first :] + self.endpoints[: self._first]

    def _headers(self, endpoint: str) -> dict[str, str]:
        if not self.username:
            return {}
        if self._token is None:
            response = self._client.post(
                f"{endpoint}/v3/auth/authenticate",
                json={"name": self.username, "password": self.password or ""},
            )
            self._token = str(self._answer(response)["token"])
        return {"authorization": self._token}

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        try:
            document = response.json()
        except ValueError:
            raise FlagStoreUnavailable(f"HTTP {response.status_code}, not JSON") from None
        if "error" in document or response.status_code >= 400:
            code = int(document.get("code", 0))
            message = str(document.get("message") or document.get("error"))
            if code in (14, 4) or response.status_code >= 500:  # unavailable, deadline
                raise FlagStoreUnavailable(message)
            raise EtcdError(code, message)
        self._first = 0
        return dict(document)

    # -- asynchronous (workers' watchers) -----------------------------------------------

    async def acall(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return await self._acall(method, body)
        except EtcdError as exc:
            raise refused(self, exc) from None

    async def _acall(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        client = self._async_client()
        failure = "no endpoint configured"
        for endpoint in self._order():
            try:
                headers = await self._aheaders(endpoint)
                response = await client.post(f"{endpoint}/v3/{method}", json=body, headers=headers)
                return self._answer(response)
            except httpx.HTTPError as exc:
                failure = f"{endpoint}: {type(exc).__name__} {exc}".rstrip()
            except FlagStoreUnavailable as exc:
                failure = f"{endpoint}: {exc.message}"
        raise unavailable(self, failure)

    async def watch(self, key: str, start_revision: int) -> AsyncIterator[dict[str, Any]]:
        """The `result` messages of one watch on `key` from `start_revision`; ends when the
        stream does. FlagStoreUnavailable when it cannot be opened or breaks."""
        client = self._async_client()
        endpoint = self._order()[0]
        body = {"create_request": {"key": b64(key), "start_revision": str(start_revision)}}
        try:
            headers = await self._aheaders(endpoint)
            async with client.stream(
                "POST",
                f"{endpoint}/v3/watch",
                json=body,
                headers=headers,
                timeout=httpx.Timeout(self.timeout, read=None),  # silence is normal here
            ) as response:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise FlagStoreUnavailable(str(message["error"].get("message")))
                    yield message.get("result", {})
        except httpx.HTTPError as exc:
            self._first = (self._first + 1) % len(self.endpoints)  # try another next time
            raise unavailable(self, f"{endpoint}: {type(exc).__name__} {exc}".rstrip()) from None

    def _async_client(self) -> httpx.AsyncClient:
        if self._async is None:
            self._async = httpx.AsyncClient(timeout=self.timeout, verify=self.verify)
        return self._async

    async def _aheaders(self, endpoint: str) -> dict[str, str]:
        if not self.username:
            return {}
        if self._token is None:
            response = await self._async_client().post(
                f"{endpoint}/v3/auth/authenticate",
                json={"name": self.username, "password": self.password or ""},
            )
            self._token = str(self._answer(response)["token"])
        return {"authorization": self._token}

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    # -- the few requests the flag store makes -------------------------------------------

    def get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The key's kv (None when absent) and the store's revision at the read."""
        answer = self.call("kv/range", {"key": b64(key)})
        kvs = answer.get("kvs") or [None]
        return kvs[0], int(answer["header"].get("revision", 0))

    def get_prefix(self, prefix: str) -> list[dict[str, Any]]:
        answer = self.call(
            "kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix), "sort_order": 1}
        )
        return list(answer.get("kvs") or [])

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def grant(self, ttl: int) -> int:
        return int(self.call("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> bool:
        """Refresh a lease; False when it has expired (grant a new one)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0)) > 0

    def revoke(self, lease: int) -> None:
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code != _NOT_FOUND:
                raise


def unavailable(etcd: Etcd, failure: str) -> FlagStoreUnavailable:
    return FlagStoreUnavailable(
        f"the flag store (etcd at {etcd.describe()}) cannot be reached ({failure}); traffic is "
        "served with the last good flags meanwhile; retry when etcd is back "
        "(check `systemctl status etcd` and SHIM_ETCD__ENDPOINTS)"
    )


_REFUSALS = {3: "invalid argument", 7: "permission denied", 16: "unauthenticated"}


def refused(etcd: Etcd, exc: EtcdError) -> Exception:
    """Credentials or permissions etcd refuses are the operator's to fix: say how."""
    if exc.code not in _REFUSALS:
        return exc
    return FlagStoreUnavailable(
        f"etcd at {etcd.describe()} refused the shim ({exc}): check SHIM_ETCD__USERNAME / "
        "SHIM_ETCD__PASSWORD and that the user's role may read and write the prefix"
    )


def kv_value(kv: Mapping[str, Any]) -> bytes:
    return unb64(kv.get("value"))
