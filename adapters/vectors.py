"""numpy kernels shared by the vector-carrying adapters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

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
            unit: np.ndarray = matrix / norms[:, None]  # the common case: one pass, no rescaling
            return unit
    # Zero rows, or rows whose squares would underflow (near 1e-160) or overflow (near
    # 1e160): scale each row by its largest magnitude first, then normalise.
    scale = np.max(np.abs(matrix), axis=1, keepdims=True) if matrix.size else np.ones((0, 1))
    scaled = np.divide(matrix, scale, out=np.zeros_like(matrix), where=scale > 0)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    rescaled: np.ndarray = np.divide(scaled, norms, out=np.zeros_like(matrix), where=norms > 0)
    return rescaled


VectorType = Literal["float32", "float64"]
VECTOR_TYPES: Mapping[VectorType, type[np.floating[Any]]] = {
    "float32": np.float32,
    "float64": np.float64,
}
# A row whose norm is this close to 1 is already unit in that type: normalising it again
# would only move its last bits (8 ulps of 1: 9.5e-7 in float32, 1.8e-15 in float64).
UNIT_TOLERANCE: Mapping[VectorType, float] = {
    name: 8 * float(np.finfo(kind).eps) for name, kind in VECTOR_TYPES.items()
}
_SAFE_FLOAT32_NORM = (1e-18, 1e18)  # rows past these go the careful float64 way


def to_unit_rows(matrix: np.ndarray, vector_type: VectorType) -> np.ndarray | None:
    """`matrix`'s rows at unit L2 norm in `vector_type`, or None when every row already is unit
    (or zero) within that type's precision: then the numbers need not change at all, and a
    caller may pass on the backend's own text for them.

    The values are first carried in `vector_type` (float32 recovers a gateway's float32 bits
    exactly from its shortest float32 text), the norms are summed in float64, and the division
    is done in `vector_type`: within 1 ulp of the correctly rounded unit vector. Rows whose
    norms float32 cannot carry (zero, near 1e-18 or 1e18 and beyond) are normalised in float64
    with rescaling, then rounded once.

    >>> to_unit_rows(np.array([[3.0, 4.0]]), "float32").tolist()
    [[0.6000000238418579, 0.800000011920929]]
    >>> to_unit_rows(np.array([[0.6, 0.8], [0.0, 0.0]]), "float32") is None
    True
    """
    if not matrix.size:
        return None
    kind = VECTOR_TYPES[vector_type]
    tolerance = UNIT_TOLERANCE[vector_type]
    with np.errstate(over="ignore"):  # a value float32 cannot hold: its row goes the slow way
        carried = matrix.astype(kind, copy=False)
        norms = np.sqrt(np.einsum("ij,ij->i", carried, carried, dtype=np.float64))
    # The two common batches decided from the smallest and largest norm alone (a few small
    # numpy calls: per request they cost more than the arithmetic): every row unit, or every
    # norm one float32 can carry. Zero rows, extreme norms and inf go the careful way below.
    smallest, largest = float(norms.min()), float(norms.max())
    if 1.0 - tolerance <= smallest and largest <= 1.0 + tolerance:
        return None
    low, high = _SAFE_FLOAT32_NORM
    if kind is np.float32 and low < smallest and largest < high:
        unit: np.ndarray = carried / norms.astype(kind)[:, None]
        return unit
    zero = norms == 0.0  # in `vector_type`: a row may have underflowed to zero on the way
    if np.all((np.abs(norms - 1.0) <= tolerance) | zero) and not np.any(matrix[zero]):
        return None
    if kind is np.float64:
        return l2_normalize(matrix)
    # A norm float32 cannot carry (zero, tiny, huge, inf): normalise in float64, round once.
    return l2_normalize(matrix.astype(np.float64, copy=False)).astype(kind)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two equal-shape matrices (zero rows give 0)."""
    cosines: np.ndarray = np.einsum("ij,ij->i", l2_normalize(a), l2_normalize(b))
    return cosines
