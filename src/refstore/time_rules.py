"""The rules that give a granule's time coordinate from its DMR++ sidecar's attributes or
its file name, learnt on the real values of one granule (:mod:`refstore.derive` proves
and applies them).

A :class:`Rule`'s first step is a global attribute (MUR25: ``start_time``), the midpoint
of a start/end pair (GAMSSA: ``time_coverage_start`` .. ``time_coverage_end``) or a
date-time in the file name (GPM IMERG: ``20051022-S000000``, its half hour's start), its
later steps at the learnt offsets; or its raw values repeat while only the sidecar's
``units`` move (RSS SSMIS: ``[1, 2] hours since <the day>``). :func:`learn` keeps the
first rule that reproduces the real raw values exactly (dtype included), encoded in the
sidecar's own ``units``/``calendar``/dtype: encoded, then decoded back equal. A
non-standard calendar's dates (cftime: IMERG's ``julian``) count as the calendar date
and time they say. Pure: no I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = ["Rule", "apply", "learn"]

# Global attributes tried as the first step, in this order; then any other ISO date-time.
_FIRST = (
    "time_coverage_start",
    "start_time",
    "begin_time",
    "RangeBeginningDateTime",
    "time_coverage_end",
    "stop_time",
    "end_time",
    "RangeEndingDateTime",
)
_PAIRS = (
    ("time_coverage_start", "time_coverage_end"),
    ("start_time", "stop_time"),
    ("begin_time", "end_time"),
    ("RangeBeginningDateTime", "RangeEndingDateTime"),
)
# Date-times tried in the file name, most specific first: a day alone also matches a
# start at midnight, and would place every later half hour of the day at midnight.
_NAME_PATTERNS = (
    "%Y%m%d-S%H%M%S",  # GPM IMERG: the start of the interval ...
    "%Y%m%d-E%H%M%S",  # ... or its end
    "%Y%m%dT%H%M%S",
    "%Y%m%d%H%M%S",  # GHRSST
    "%Y%m%dT%H%M",
    "%Y%m%d%H%M",
    "%Y%m%d",
    "%Y-%m-%d",
    "%Y%j",
)


@dataclass(frozen=True, slots=True)
class Rule:
    """How a granule's concat coordinate follows from its sidecar's attributes.

    ``kind``: ``"attr"`` (first step = global attribute ``names[0]``), ``"mid"`` (first
    step = midpoint of ``names[0]`` and ``names[1]``), ``"name"`` (first step = the
    date-time the file name holds under the strptime pattern ``names[0]``), ``"same"``
    (raw values ``raw``, decoded with the sidecar's own units). ``steps_ns``: each step's
    offset from the first, in nanoseconds (``"attr"``/``"mid"``/``"name"``).
    """

    kind: str
    names: tuple[str, ...] = ()
    steps_ns: tuple[int, ...] = (0,)
    raw: tuple[Any, ...] = ()

    def describe(self) -> str:
        """The rule in words (logs and reports)."""
        if self.kind == "attr":
            return f"{self.names[0]} (global attribute)"
        if self.kind == "mid":
            return f"midpoint of {self.names[0]} and {self.names[1]}"
        if self.kind == "name":
            return f"date-time {self.names[0]} in the file name"
        return f"raw values {list(self.raw)} in the sidecar's units"


def _instant(attrs: Mapping[str, Any], name: str) -> int | None:
    """Global attribute ``name`` as ns since 1970 (ISO 8601 text); None if it is not one."""
    raw = attrs.get(name)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, np.ndarray) and raw.size == 1:
        raw = raw.item()
    if not isinstance(raw, str) or len(raw.strip()) < 10:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return int(np.datetime64(moment, "ns").astype(np.int64))


def _is_time(var_attrs: Mapping[str, Any]) -> bool:
    units = var_attrs.get("units")
    return isinstance(units, str) and " since " in units


def _decode(raw: Any, var_attrs: Mapping[str, Any]) -> Any:
    """``raw`` decoded, as int64 ns since 1970; a non-standard calendar's dates (cftime,
    IMERG's ``julian``) as the calendar date and time they say (numpy converts them so)."""
    from xarray.coding.times import decode_cf_datetime

    values = decode_cf_datetime(np.asarray(raw), str(var_attrs["units"]), var_attrs.get("calendar"))
    return np.asarray(values).astype("datetime64[ns]").astype(np.int64)


def _encode(ns: Any, var_attrs: Mapping[str, Any], dtype: Any) -> tuple[Any, str | None]:
    """``ns`` (int64 ns since 1970) in the variable's units/calendar/dtype, exactly."""
    from xarray.coding.times import encode_cf_datetime

    moments = np.asarray(ns, dtype=np.int64).astype("datetime64[ns]")
    units, calendar = str(var_attrs["units"]), var_attrs.get("calendar")
    try:
        with warnings.catch_warnings():
            # xarray falls back to finer units when these are not exact: the check below
            # (decoded in the sidecar's own units) refuses that, so the advice is noise.
            warnings.simplefilter("ignore")
            encoded, _, _ = encode_cf_datetime(moments, units, calendar, dtype=np.dtype(dtype))
        raw = np.asarray(encoded).astype(dtype)
        back = _decode(raw, var_attrs)
    except Exception as e:
        return None, f"cannot be encoded in {units!r} ({type(e).__name__}: {e})"
    if not np.array_equal(back, np.asarray(ns, dtype=np.int64)):
        return None, f"is not exact in {units!r} as {np.dtype(dtype)}"
    return raw, None


def _anchor(rule: Rule, attrs: Mapping[str, Any], name: str) -> tuple[int | None, str | None]:
    if rule.kind == "name":
        from refstore.concat_from import value_from_name

        moment, problem = value_from_name(name, rule.names[0])
        if moment is None:
            return None, f"{name!r}: {problem}"
        return int(moment.astype("datetime64[ns]").astype(np.int64)), None
    if rule.kind == "attr":
        at = _instant(attrs, rule.names[0])
        return at, None if at is not None else f"no date-time in attribute {rule.names[0]}"
    a, b = (_instant(attrs, n) for n in rule.names)
    if a is None or b is None:
        return None, f"no date-times in attributes {rule.names[0]}, {rule.names[1]}"
    if (b - a) % 2:
        return None, f"{rule.names[0]}..{rule.names[1]} has no whole-nanosecond midpoint"
    return a + (b - a) // 2, None


def apply(
    rule: Rule,
    global_attrs: Mapping[str, Any],
    var_attrs: Mapping[str, Any],
    dtype: Any,
    length: int,
    name: str = "",
) -> tuple[Any, str | None]:
    """The raw coordinate values ``rule`` gives for a granule whose sidecar has these
    attributes and a coordinate of ``length`` steps stored as ``dtype``, and whose file
    is called ``name`` (:func:`refstore.derive.file_name`): (values, None), or (None, why not)."""
    steps = len(rule.raw) if rule.kind == "same" else len(rule.steps_ns)
    if length != steps:
        return None, f"{length} steps in the sidecar, the rule has {steps}"
    if not _is_time(var_attrs):
        return None, "the coordinate has no time units"
    if rule.kind == "same":
        if var_attrs.get("units") == rule.names[0]:  # the same instants again: a duplicate
            return None, f"units {rule.names[0]!r} as on the granule the rule was proved on"
        return np.asarray(rule.raw).astype(dtype), None
    first, problem = _anchor(rule, global_attrs, name)
    if first is None:
        return None, problem
    return _encode(first + np.asarray(rule.steps_ns, dtype=np.int64), var_attrs, dtype)


def _reproduces(rule: Rule, raw: Any, global_attrs: Any, var_attrs: Any, name: str) -> bool:
    got, _ = apply(rule, global_attrs, var_attrs, raw.dtype, raw.size, name)
    return got is not None and got.dtype == raw.dtype and bool(np.array_equal(got, raw))


def learn(
    raw: Any, global_attrs: Mapping[str, Any], var_attrs: Mapping[str, Any], name: str = ""
) -> Rule | None:
    """The first rule that gives exactly ``raw`` (the coordinate's real raw values) from
    these attributes and the file name ``name``, preferring a global attribute, then a
    midpoint, then a date-time in the name, then repeated raw values; None if none does."""
    raw = np.asarray(raw)
    if raw.ndim != 1 or raw.size == 0 or raw.dtype.kind not in "iuf":
        return None
    candidates: list[Rule] = []
    if _is_time(var_attrs):
        try:
            ns = _decode(raw, var_attrs)
        except Exception:
            ns = None
        if ns is not None:
            steps = tuple(int(v - ns[0]) for v in ns)
            named = [n for n in _FIRST if n in global_attrs]
            named += sorted(str(n) for n in global_attrs if n not in _FIRST)
            candidates += [Rule("attr", (n,), steps) for n in named if _instant(global_attrs, n)]
            candidates += [
                Rule("mid", p, steps) for p in _PAIRS if all(n in global_attrs for n in p)
            ]
            candidates += [Rule("name", (p,), steps) for p in _NAME_PATTERNS if name]
        # Raw values that repeat under each granule's own epoch (RSS SSMIS: [1, 2] hours
        # since the day); applied only where the units moved (refstore.derive.apply).
        units = str(var_attrs["units"])
        candidates.append(Rule("same", (units,), raw=tuple(v.item() for v in raw)))
    return next(
        (
            r
            for r in candidates
            if r.kind == "same" or _reproduces(r, raw, global_attrs, var_attrs, name)
        ),
        None,
    )
