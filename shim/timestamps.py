"""The one way the shim writes a point in time: ISO 8601 in UTC with a `Z`
(`2026-12-04T03:53:26.123Z`), as audit records, parity samples and reports carry it.
Imports nothing of the shim."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds"]


def iso_utc(ts: float | None = None, *, timespec: Precision = "milliseconds") -> str:
    """`ts` (seconds since the epoch; default now) as `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.

    >>> iso_utc(0)
    '1970-01-01T00:00:00.000Z'
    >>> iso_utc(1.5, timespec="seconds")
    '1970-01-01T00:00:01Z'
    """
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
