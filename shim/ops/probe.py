"""`shim parity probe`: the same requests to both backends directly, compared now.

The seed's `embed_parity.sh`, built in: no shadow traffic needed, no flag changed. Inputs
are JSON lines of request bodies in one dialect (`--input`), or, for rehearsals, the samples
the endpoint's adapter gives (`Adapter.samples`).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import orjson

from shim.errors import BackendError, ConfigError
from shim.parity.verdicts import ParityStore, Verdict, judge
from shim.routes import Route
from shim.serving.shadow import Capture, Shadower, UnShadowable, judge_sample, other, shadow_payload
from shim.serving.upstream import Upstream
from shim.settings import Settings
from shim.types import Backend


def builtin_requests(route: Route, face: Backend, count: int) -> list[dict[str, Any]]:
    """Rehearsal inputs in `face`'s dialect: the endpoint's adapter's samples."""
    requests = route.samples(face, count)
    if not requests:
        raise ConfigError(
            f"no built-in probe requests for {route.name}: pass --input FILE", key="--input"
        )
    return requests


def unprobeable(route: Route) -> str | None:
    """Why this endpoint cannot be probed (every request goes to both backends), or None."""
    if route.go_only:
        return f"{route.name} is Go-only: there is no Rust backend to compare it with"
    if not route.shadowable:
        return (
            f"{route.name} is not idempotent: a probe sends each request to both backends, "
            "so it would run twice (compare it by hand, or with shadow on a staging pair)"
        )
    return None


def read_requests(path: Path) -> list[dict[str, Any]]:
    """JSON lines of request bodies (blank lines skipped); at least one."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; name a JSON-lines file", key="--input") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="--input") from None
    requests = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            requests.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"line {number} is not JSON: {exc}", key=str(path)) from None
    if not requests:
        raise ConfigError(
            f"{path} holds no request bodies: write one JSON request body per line",
            key="--input",
        )
    return requests


async def probe(
    settings: Settings,
    route: Route,
    requests: list[dict[str, Any]],
    *,
    face: Backend,
    record: bool,
) -> tuple[Verdict, list[dict[str, Any]]]:
    """Send every request to both backends, compare, and judge (optionally recording)."""
    why = unprobeable(route)
    if why is not None:
        raise ConfigError(f"cannot be probed: {why}", key="ENDPOINT")
    if not requests:
        raise ConfigError("a probe needs at least one request", key="--samples")
    upstream = Upstream(settings)
    await upstream.start()
    store = ParityStore(settings.state_dir)
    shadower = Shadower(settings, upstream, store)
    samples = []
    try:
        for body in requests:
            capture = Capture(
                route,
                face,
                face,
                "POST",
                {},
                b"",
                [],
                uuid.uuid4().hex,
                settings.shadow_max_body_bytes,
            )
            capture.keep_request(orjson.dumps(body))
            answers: dict[Backend, tuple[int, bytes]] = {}
            try:
                payloads = {face: orjson.dumps(body), other(face): shadow_payload(capture)}
                for backend, payload in payloads.items():
                    url = shadower.url_for(route, backend, capture)
                    headers = [("Content-Type", "application/json"), ("X-Shim-Shadow", "1")]
                    answers[backend] = await shadower.fetch(
                        route, backend, "POST", url, headers, payload
                    )
                sample = judge_sample(capture, answers=answers, kind="probe")
            except UnShadowable as exc:
                samples.append({"kind": "probe", "error": f"not comparable: {exc.reason}"})
                continue
            except BackendError as exc:
                sample = judge_sample(capture, error=exc.message, kind="probe")
            if record:
                store.append(sample)
            samples.append(sample)
    finally:
        await upstream.close()
    judged = dataclasses.replace(
        route, parity=dataclasses.replace(route.parity, min_samples=len(samples))
    )
    return judge(judged, samples), samples
