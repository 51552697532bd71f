"""How a served array differs from the file's own read, in a few words (pure).

One rule for the readback check at admission and for ``refstore verify``: equal means
same dtype, same shape, same NaN mask and same values; text compares as text (readers
hold it as object, ``<U`` or numpy's StringDType, which says nothing about its content).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["difference"]

_TEXT = "OUT"


def difference(served: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> str | None:
    """None if ``served`` equals ``expected`` (the file's read), else what differs."""
    if served.dtype.kind in _TEXT and expected.dtype.kind in _TEXT:
        served, expected = served.astype(object), expected.astype(object)
    if served.dtype != expected.dtype:
        return f"dtype {served.dtype} served, {expected.dtype} in the file"
    if served.shape != expected.shape:
        return f"shape {served.shape} served, {expected.shape} in the file"
    if served.dtype.kind in "mM":
        equal = np.array_equal(served.view(np.int64), expected.view(np.int64))
    elif served.dtype.kind in "fc":
        nan_s, nan_e = np.isnan(served), np.isnan(expected)
        if not np.array_equal(nan_s, nan_e):
            return (
                f"NaN mask differs ({int(nan_s.sum())} NaN served, {int(nan_e.sum())} in the file)"
            )
        equal = np.array_equal(served, expected, equal_nan=True)
    else:
        equal = np.array_equal(served, expected)
    if equal:
        return None
    diff = np.flatnonzero(served.ravel() != expected.ravel())
    first = int(diff[0]) if diff.size else 0
    return (
        f"values: {diff.size} of {served.size} differ "
        f"(e.g. {served.ravel()[first]!r} served, {expected.ravel()[first]!r} in the file)"
    )
