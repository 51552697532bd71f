"""Helpers the benchmark scripts share (``python scripts/<bench>.py`` puts this folder on
``sys.path``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``fn()``'s wall time in seconds and its result."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out
