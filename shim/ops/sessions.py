"""The operator page's session cookie and CSRF tokens: signed values, no server-side store.

The signing key is derived from the admin token, so every worker (and every instance with the
same token) checks them without sharing a file, and a new token ends every session. The
session cookie carries who logged in, the CSRF nonce it is bound to and its expiry; never the
token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

import orjson
from pydantic import SecretStr

SESSION_SECONDS = 8 * 3600


def signing_key(token: SecretStr) -> bytes:
    """The signing key: derived from the admin token, so every worker has it without a file,
    and a new token ends every session."""
    return hmac.new(token.get_secret_value().encode(), b"cutover-shim ui", hashlib.sha256).digest()


def _sign(key: bytes, text: str) -> str:
    mac = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def new_csrf(key: bytes) -> str:
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_sign(key, 'csrf:' + nonce)}"


def csrf_nonce(key: bytes, value: str) -> str | None:
    nonce, _, signature = value.partition(".")
    ok = nonce and hmac.compare_digest(signature, _sign(key, "csrf:" + nonce))
    return nonce if ok else None


def new_session(key: bytes, *, who: str, nonce: str, now: float) -> str:
    body = base64.urlsafe_b64encode(
        orjson.dumps({"who": who, "n": nonce, "exp": int(now + SESSION_SECONDS)})
    ).decode()
    return f"{body}.{_sign(key, 'session:' + body)}"


def session_of(key: bytes, value: str, *, now: float) -> dict[str, Any] | None:
    """The session a cookie carries, when signed by `key` and not expired."""
    body, _, signature = value.partition(".")
    if not body or not hmac.compare_digest(signature, _sign(key, "session:" + body)):
        return None
    try:
        session = orjson.loads(base64.urlsafe_b64decode(body))
    except ValueError:
        return None
    return session if isinstance(session, dict) and session.get("exp", 0) > now else None
