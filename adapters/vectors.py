"""numpy kernels shared by the vector-carrying adapters."""

from __future__ import annotations

from typing import Any

import numpy as np

from adapters.errors import NonFiniteError, ShapeError


def as_matrix(rows: Any, *, field: str) -> np.ndarray:
    """Turn a JSON list of equal-length number lists into a float64 matrix (n, d).

    Rejects ragged rows, strings, nested objects and non-finite values with the field's path,
    so a bad batch is one clear error rather than a numpy traceback.
    """
    if isinstance(rows, np.ndarray):  # already translated once (round-trips, chained adapters)
        matrix = rows
    elif not isinstance(rows, list):
        raise ShapeError(f"{field} must be a list of vectors", field=field)
    elif not rows:
        return np.zeros((0, 0), dtype=np.float64)
    else:
        try:
            matrix = np.array(rows)
        except ValueError as exc:  # ragged: rows of different lengths
            raise ShapeError(f"{field} rows must all have the same length", field=field) from exc
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise ShapeError(f"{field} must be a list of lists of numbers", field=field)
    matrix = matrix.astype(np.float64, copy=False)
    ensure_finite(matrix, field=field)
    return matrix


def ensure_finite(values: np.ndarray, *, field: str) -> None:
    """Raise NonFiniteError naming `field` when any value is NaN or infinite."""
    if not np.isfinite(values).all():
        raise NonFiniteError(f"{field} contains NaN or infinite values", field=field)


_SAFE_NORM = (1e-150, 1e150)  # squared, these stay normal doubles


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm, vectorised over the batch; a zero row stays zero.

    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    if matrix.size:
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        if np.all((norms > _SAFE_NORM[0]) & (norms < _SAFE_NORM[1])):
            return matrix / norms[:, None]  # the common case: one pass, no rescaling
    # Zero rows, or rows whose squares would underflow (near 1e-160) or overflow (near
    # 1e160): scale each row by its largest magnitude first, then normalise.
    scale = np.max(np.abs(matrix), axis=1, keepdims=True) if matrix.size else np.ones((0, 1))
    scaled = np.divide(matrix, scale, out=np.zeros_like(matrix), where=scale > 0)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.divide(scaled, norms, out=np.zeros_like(matrix), where=norms > 0)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two equal-shape matrices (zero rows give 0)."""
    return np.einsum("ij,ij->i", l2_normalize(a), l2_normalize(b))
