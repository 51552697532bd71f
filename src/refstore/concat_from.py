"""Where a granule's concat value comes from when the file has no concat dim.

Many L3/L4 products hold one step per file but no ``time`` dimension: the time is a
scalar coordinate (NASA-SSH), a global attribute (``time_coverage_start``) or only in the
file name (OMI/OMPS L3, SMAP L4). ``[dataset] concat_from`` says where to look::

    concat_from = "auto"                          # the dim; else a scalar variable named
                                                  # like the concat dim, promoted
    concat_from = "scalar"                        # a scalar variable named like the dim
    concat_from = "scalar:obs_time"               # ... or named so
    concat_from = "attr:time_coverage_start"      # a global attribute (ISO 8601 text)
    concat_from = "filename:%Y%m%d"               # strptime codes, searched in the name
    concat_from = "arrival"                       # the dim has no coordinate: stack in
                                                  # arrival order (opt-in; else refused)
    concat_from = "var:time"                      # the dim's coordinate is an index that
                                                  # repeats (TEMPO mirror_step 0..131): order
                                                  # by this 1-D variable along the dim

Each granule then gets a length-1 concat dim and that one value as its coordinate, so
the store reads back as ``xr.open_dataset(file).expand_dims(...)`` would. A value from
an attribute or a file name is stored as int64 ``seconds since 1970-01-01`` (exact for
whole seconds; anything finer is refused rather than rounded). This module is pure: it
parses settings and values and builds coordinates; :mod:`refstore.virtualize` wires it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from refstore.errors import ConfigError

if TYPE_CHECKING:  # numpy stays out of config loading (the CLI's import time)
    import numpy as np

__all__ = [
    "DERIVED_UNITS",
    "ConcatFrom",
    "coordinate_names",
    "encode_derived",
    "parse_concat_from",
    "value_from_attr",
    "value_from_name",
]

DERIVED_UNITS = "seconds since 1970-01-01 00:00:00"
DERIVED_CALENDAR = "proleptic_gregorian"
KINDS = ("auto", "scalar", "attr", "filename", "arrival", "var")
# strptime codes a file-name pattern may use, and what each matches.
_CODES = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "j": r"\d{3}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "b": r"[A-Za-z]{3}",
    "%": "%",
}
_HINT = (
    'Use concat_from = "auto", "scalar", "scalar:<variable>", "attr:<global attribute>", '
    '"filename:<strptime pattern>" (e.g. "filename:%Y%m%d"), "arrival" or "var:<variable>" '
    "(a 1-D variable along the dim that orders granules); see docs/layouts.md."
)


@dataclass(frozen=True, slots=True)
class ConcatFrom:
    """A parsed ``concat_from`` setting: ``kind`` and its argument (may be empty)."""

    kind: str
    arg: str = ""

    def order_by(self, concat_dim: str) -> str:
        """The variable whose values order granules along the dim (``var:NAME``: NAME)."""
        return self.arg if self.kind == "var" else concat_dim

    @property
    def derived(self) -> bool:
        """Whether the value comes from outside the file's dims (attribute or name)."""
        return self.kind in ("attr", "filename")


def parse_concat_from(text: str) -> ConcatFrom:
    """Parse and validate a ``concat_from`` setting.

    Raises
    ------
    ConfigError
        Unknown kind, a missing argument, or a file-name pattern without a date code.
    """
    kind, _, arg = text.partition(":")
    kind = kind.strip()
    if kind not in KINDS or (kind in ("auto", "arrival") and arg):
        raise ConfigError(f"[dataset] concat_from {text!r} is not understood.", _HINT)
    if kind in ("attr", "filename", "var") and not arg.strip():
        raise ConfigError(f"[dataset] concat_from {text!r} needs a name after ':'.", _HINT)
    if kind == "filename":
        _pattern_regex(arg)  # validates
    return ConcatFrom(kind, arg.strip() if kind != "filename" else arg)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    codes = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%":
            code = pattern[i + 1 : i + 2]
            if code not in _CODES:
                raise ConfigError(
                    f"[dataset] concat_from file-name pattern {pattern!r}: %{code} is not "
                    f"supported (use %{', %'.join(c for c in _CODES if c != '%')}).",
                    _HINT,
                )
            out.append(_CODES[code])
            codes += code != "%"
            i += 2
            continue
        out.append(re.escape(ch))
        i += 1
    if not codes:
        raise ConfigError(
            f"[dataset] concat_from file-name pattern {pattern!r} has no date code.", _HINT
        )
    return re.compile("".join(out))


def _utc(moment: datetime) -> np.datetime64:
    import numpy as np

    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


def value_from_name(name: str, pattern: str) -> tuple[np.datetime64 | None, str | None]:
    """The time the file name ``name`` carries under ``pattern``: (value, None), or
    (None, why not). The pattern is searched in the name; its first match is used."""
    found = _pattern_regex(pattern).search(name)
    if found is None:
        return None, f"file name does not match the pattern {pattern!r}"
    try:
        return _utc(datetime.strptime(found.group(0), pattern)), None
    except ValueError as e:
        return None, f"{found.group(0)!r} in the file name is not a date for {pattern!r} ({e})"


def value_from_attr(attrs: Mapping[str, Any], name: str) -> tuple[np.datetime64 | None, str | None]:
    """The time held by the global attribute ``name`` (ISO 8601 text, ``Z`` or an offset
    allowed): (value, None), or (None, why not)."""
    if name not in attrs:
        return None, f"has no global attribute {name!r}"
    raw = attrs[name]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if hasattr(raw, "size") and getattr(raw, "size", 0) == 1 and hasattr(raw, "item"):
        raw = raw.item()
    text = str(raw).strip()
    try:
        return _utc(datetime.fromisoformat(text.replace("z", "Z"))), None
    except ValueError:
        return None, f"global attribute {name}={text!r} is not an ISO 8601 date-time"


def encode_derived(value: np.datetime64) -> tuple[np.ndarray, dict[str, str], str | None]:
    """``value`` as stored: int64 seconds since 1970 with CF attributes, and a problem
    when it is not a whole second (never rounded)."""
    import numpy as np

    ns = int(np.datetime64(value, "ns").astype(np.int64))
    seconds, rest = divmod(ns, 1_000_000_000)
    attrs = {"units": DERIVED_UNITS, "calendar": DERIVED_CALENDAR}
    problem = None
    if rest:
        shown = np.datetime_as_string(value)
        problem = f"{shown} is finer than whole seconds (stored in {DERIVED_UNITS!r})"
    return np.array([seconds], dtype="i8"), attrs, problem


def coordinate_names(
    dims: Mapping[str, tuple[str, ...]], attrs: Mapping[str, Mapping[str, Any]]
) -> set[str]:
    """Variables xarray opens as coordinates: dimension coordinates and every name listed
    in a ``coordinates`` attribute. ``expand_dims`` leaves them as they are."""
    names = {n for n, d in dims.items() if d == (n,)}
    for a in attrs.values():
        text = a.get("coordinates")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if isinstance(text, str):
            names.update(w for w in text.split() if w in dims)
    return names
