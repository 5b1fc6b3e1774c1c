"""The one percentile of the shim: numpy's default (linear) method, for the small arrays of
one comparison or one verdict. Imports nothing of the shim (stdlib and numpy only), so any
layer may use it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def percentiles(
    values: npt.NDArray[np.floating] | Sequence[float], points: tuple[float, ...]
) -> list[float]:
    """numpy's default (linear) percentiles of `values` (not empty) at each of `points`
    (0-100), without np.percentile's generic machinery (~35 us a call; this runs on every
    shadow comparison).

    >>> percentiles([1.0, 2.0, 3.0, 4.0], (0, 50, 100))
    [1.0, 2.5, 4.0]
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    last = len(ordered) - 1
    found = []
    for point in points:
        position = point / 100 * last
        low = int(position)
        high = min(low + 1, last)
        found.append(float(ordered[low] + (ordered[high] - ordered[low]) * (position - low)))
    return found
