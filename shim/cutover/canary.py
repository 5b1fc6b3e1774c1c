"""Sticky canary buckets: which callers of an endpoint a `percent` sends to Go.

A caller's bucket is a stable hash of (endpoint, caller key) in 0..99, the same in every
worker and every instance (never Python's salted `hash()`). Callers with a bucket below
`percent` go to Go, so raising the percent only ever moves callers towards Go.
"""

from __future__ import annotations

import hashlib

from shim.types import Backend


def bucket(endpoint: str, caller: str) -> int:
    """0..99 for (endpoint, caller), identical across processes and hosts."""
    digest = hashlib.blake2b(f"{endpoint}\x00{caller}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100


def canary_backend(endpoint: str, caller: str, percent: int) -> Backend:
    """Go for the callers whose bucket is below `percent`, Rust for the rest."""
    return "go" if bucket(endpoint, caller) < percent else "rust"
