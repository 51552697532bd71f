"""The loaded variables of a sidecar-built granule without a byte of the granule, once proved.

Real DAAC sidecars carry every attribute and chunk reference but no values, so a granule
built from one still read its coordinates (one ranged GET of 9-24 KB). This module lets
later granules skip that read when the first one *proved* where the values come from:

- **the concat coordinate** follows a :class:`Rule` learnt from the real values of the
  first sidecar-built granule of its kind: its first step is a global attribute
  (``start_time``), or the midpoint of a start/end pair (``time_coverage_start`` ..
  ``time_coverage_end``), or a date-time in the granule's file name (GPM IMERG:
  ``20051022-S000000``, the start of its half hour; its ``Grid`` attributes hold no
  time), later steps at the learnt offsets; or its raw values repeat and only the
  sidecar's ``units`` move (RSS SSMIS: ``[1, 2] hours since <the day>``). A rule is kept
  only if it reproduces the real raw values exactly (dtype included), encoded in the
  sidecar's own ``units``/``calendar``/dtype (a non-standard calendar, IMERG's
  ``julian``, as the calendar date the file says);
- **the other loaded variables** (lat, lon, crs: written once, compared on later
  granules) take the proved granule's values when the sidecar describes them exactly as
  it did (shape, dtype, codecs, fill value, attributes *and* compressed chunk lengths):
  :func:`describe` is that description, and its hash (:func:`key`) names the proof.
- **an uncompressed array** says nothing by its length (any grid of that shape has it).
  A 1-D one (RSS SSMIS lat/lon) is derived only when the proved values form an exact
  regular grid (:func:`regular_grid`: each value ``first + i * step`` in its own dtype,
  as a producer writes a fixed grid from a formula) and the sidecar places it at the
  *same offset* with the same length, attributes and fill value (the file laid out
  alike up to there: RSS SSMIS files of one processing version; a changed attribute a
  year apart moves it by 16 bytes, and that granule proves anew). Anything else
  uncompressed (2-D, irregular, a moved offset) is read.

What this does not prove: that equal chunk references hold equal bytes (for an
uncompressed grid: that the same place holds the same grid), or that a later granule's
attribute or file name still says what its coordinate holds. :func:`sampled` picks about
one granule in :data:`CHECK_EVERY` whose values are read anyway and compared with the
rule (a mismatch drops the proof); ``refstore verify`` compares the coordinate of every
step it samples with the file. No I/O here: the rules are pure, and the helpers at the end
work on a parsed sidecar (a ``ManifestGroup``) for :mod:`refstore.virtualize`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from refstore.coords import plain

__all__ = [
    "CHECK_EVERY",
    "Proof",
    "Rule",
    "apply",
    "check_or_learn",
    "derived_values",
    "describe",
    "file_name",
    "key",
    "learn",
    "regular_grid",
    "sampled",
    "values_store",
]

CHECK_EVERY = 25  # one derived granule in this many is read and compared (by key hash)
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
_MOVING = ("units",)  # the concat coordinate's attributes a rule reads, not compares


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


@dataclass(frozen=True, slots=True)
class Proof:
    """A rule proved on one granule, and the values of its other loaded variables."""

    key: str  # :func:`key` of the proved granule's sidecar description
    rule: Rule
    loaded: dict[str, Any]  # name -> raw numpy values (loaded variables but the concat one)
    proved_on: str = ""  # the granule key it was proved on
    # Whether it may be applied: a rule tied to an attribute is, once it reproduced one
    # granule; repeated raw values reproduce any single granule, so they wait for a
    # second granule, under other units, to show them again.
    confirmed: bool = True

    def to_json(self) -> str:
        r = self.rule
        return json.dumps(
            {
                "key": self.key,
                "proved_on": self.proved_on,
                "rule": {
                    "kind": r.kind,
                    "names": list(r.names),
                    "steps_ns": list(r.steps_ns),
                    "raw": list(r.raw),
                },
                "loaded": {n: _pack(v) for n, v in sorted(self.loaded.items())},
                "confirmed": self.confirmed,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Proof | None:
        """The proof; None if the text is unreadable (then nothing is derived)."""
        try:
            d = json.loads(text)
            r = d["rule"]
            rule = Rule(str(r["kind"]), tuple(r["names"]), tuple(r["steps_ns"]), tuple(r["raw"]))
            loaded = {str(n): _unpack(v) for n, v in d["loaded"].items()}
            proved_on, confirmed = str(d.get("proved_on", "")), bool(d.get("confirmed", False))
            return cls(str(d["key"]), rule, loaded, proved_on, confirmed)
        except (ValueError, TypeError, KeyError):
            return None


def _pack(values: Any) -> dict[str, Any]:
    a = np.array(values, order="C")  # ascontiguousarray would make a scalar 1-D
    return {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "data": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def _unpack(d: Mapping[str, Any]) -> Any:
    raw = base64.b64decode(d["data"])
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def sampled(granule_key: str) -> bool:
    """Whether this granule's values are read and compared with the proved rule anyway
    (about one in :data:`CHECK_EVERY`, the same granules every run)."""
    digest = hashlib.sha256(granule_key.encode()).hexdigest()
    return int(digest[:8], 16) % CHECK_EVERY == 0


def file_name(url: str) -> str:
    """The file name at the end of ``url`` (what a ``"name"`` rule reads)."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def regular_grid(values: Any) -> bool:
    """Whether ``values`` are a regular grid: 1-D, at least 3 finite values, each
    ``first + i * step`` (integers exactly; floats to within one unit in the last place
    of their dtype, as a grid computed in double and stored in single precision is).
    What an uncompressed coordinate must be to be derived: a fixed grid written from a
    formula, not data. The values derived are the proved ones, never the formula's."""
    a = np.asarray(values)
    if a.ndim != 1 or a.size < 3 or a.dtype.kind not in "iuf" or not np.isfinite(a).all():
        return False
    first, last = a[0].item(), a[-1].item()
    if first == last:
        return False
    if a.dtype.kind in "iu":
        return bool((np.diff(a.astype(np.int64)) == a[1].item() - first).all())
    grid = first + (last - first) / (a.size - 1) * np.arange(a.size, dtype=np.float64)
    ulp = np.spacing(np.abs(a)).astype(np.float64)
    return bool((np.abs(a.astype(np.float64) - grid) <= ulp).all())


# -- the sidecar's description of the loaded variables ----------------------------------------
def describe(group: Any, loadable: Sequence[str], concat_dim: str) -> dict[str, Any] | None:
    """What the sidecar (a ``ManifestGroup``) says about the loaded variables; None if
    they cannot be derived (a loaded variable along the concat dim other than its
    coordinate, or a coordinate that is not 1-D)."""
    out: dict[str, Any] = {}
    for name in sorted(loadable):
        arr = group.arrays.get(name)
        if arr is None:
            return None
        meta = arr.metadata
        dims = [str(d) for d in (meta.dimension_names or ())]
        if concat_dim in dims and (name != concat_dim or dims != [concat_dim]):
            return None
        attrs = dict(meta.attributes)
        entry: dict[str, Any] = {
            "dims": dims,
            "shape": [int(n) for n in meta.shape],
            "dtype": str(meta.data_type),
            "chunks": [int(c) for c in meta.chunks],
            "codecs": [c.to_dict() for c in meta.codecs],
            "fill": plain(meta.fill_value),
        }
        if name == concat_dim:
            entry["attrs"] = {k: v for k, v in attrs.items() if k not in _MOVING}
        else:
            entry["attrs"] = attrs
            # Compressed lengths, not offsets: where a chunk lies says nothing of what it
            # holds (RSS SSMIS moves lat/lon by a few bytes of attributes a year apart).
            chunks = arr.manifest.dict().items()
            entry["lengths"] = sorted((k, int(e["length"])) for k, e in chunks)
            if _raw(meta):
                # Raw bytes: any grid of this shape has these lengths. A 1-D one is
                # described by where it lies too, and derived only from a regular grid
                # (check_or_learn); anything else uncompressed is read.
                if len(meta.shape) != 1:
                    return None
                entry["raw_at"] = sorted((k, int(e["offset"]), int(e["length"])) for k, e in chunks)
        out[name] = entry
    return out if concat_dim in out else None


def _raw(meta: Any) -> bool:
    """Whether an array's chunks are its raw bytes (no codec but the byte order) and it
    is not a scalar: its lengths hold for any values of its shape."""
    return len(meta.codecs) < 2 and bool(meta.shape)


def key(description: Mapping[str, Any]) -> str:
    """A stable hash of :func:`describe`'s output."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# -- rules ------------------------------------------------------------------------------------
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
    is called ``name`` (:func:`file_name`): (values, None), or (None, why not)."""
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


# -- wiring on a sidecar's ManifestGroup (used by refstore.virtualize) ----------------------
def derived_values(
    proof: Proof, group: Any, dim: str, names: tuple[str, ...], url: str
) -> dict[str, Any] | None:
    """The raw values of the loaded variables ``names`` from ``proof`` for this sidecar
    of the granule at ``url``; None if its rule does not apply (the granule's values are
    then read)."""
    if set(proof.loaded) | {dim} != set(names):
        return None
    coord = group.arrays[dim].metadata
    dtype = np.dtype(coord.data_type.to_native_dtype())
    attrs, length = group.metadata.attributes, int(coord.shape[0])
    raw, _ = apply(proof.rule, attrs, coord.attributes, dtype, length, file_name(url))
    return None if raw is None else {**proof.loaded, dim: raw}


def check_or_learn(
    vg: Any,
    group: Any,
    dim: str,
    proved: tuple[str, Proof | None],
    derived: dict[str, Any] | None,
) -> Any:
    """``vg`` (a :class:`~refstore.virtualize.VirtualGranule`, its loaded values read)
    with the derivation they prove (``proof``), or the proof they contradict
    (``disproved``). ``proved``: the sidecar's :func:`key` and the proof of that key in
    use, if any; ``derived``: what that proof gave for this sidecar, if it applied."""
    proof_key, proof = proved
    raw = np.asarray(vg.dataset.variables[dim].values)
    if proof is not None:
        loaded = {n: np.asarray(vg.dataset.variables[n].values) for n in proof.loaded}
        wrong = [n for n, v in loaded.items() if not np.array_equal(v, proof.loaded[n])]
        if derived is not None and not np.array_equal(derived[dim], raw):
            wrong.insert(0, dim)
        if derived is not None and not wrong:
            if proof.confirmed:
                return vg  # the proof holds here too
            shown = replace(proof, proved_on=vg.granule.key, confirmed=True)
            return replace(vg, proof=shown.to_json())  # a second granule showed it again
        if wrong and proof.confirmed:
            note = (
                f"values of {', '.join(wrong)} differ from the derivation proved on "
                f"{proof.proved_on} ({proof.rule.describe()}); read from the file"
            )
            return replace(vg, disproved=proof.key, note=note)
    # No proof for this sidecar yet, or its rule does not apply here: learn one.
    coord_attrs = group.arrays[dim].metadata.attributes
    rule = learn(raw, group.metadata.attributes, coord_attrs, file_name(vg.granule.url))
    if rule is None:
        return vg
    loaded = {
        n: np.asarray(vg.dataset.variables[n].values)
        for n, v in vg.dataset.variables.items()
        if n != dim and n in group.arrays and not hasattr(v.data, "manifest")
    }
    # An uncompressed array is derived only from a regular grid (see describe).
    if not all(regular_grid(v) for n, v in loaded.items() if _raw(group.arrays[n].metadata)):
        return vg
    made = Proof(proof_key, rule, loaded, vg.granule.key, confirmed=rule.kind != "same")
    return replace(vg, proof=made.to_json())


def values_store(group: Any, values: dict[str, Any]) -> Any:
    """An in-memory zarr store holding ``values`` as the sidecar describes their arrays
    (dtype, shape, fill value, attributes, dimension names): what xarray opens in place of
    the granule's chunks."""
    import zarr

    store = zarr.storage.MemoryStore()
    root = zarr.create_group(store, zarr_format=3, attributes=dict(group.metadata.attributes))
    for name, v in values.items():
        meta = group.arrays[name].metadata
        arr = root.create_array(
            name,
            shape=tuple(meta.shape),
            dtype=np.asarray(v).dtype,
            chunks=tuple(meta.chunks),
            fill_value=meta.fill_value,
            attributes=dict(meta.attributes),
            dimension_names=meta.dimension_names,
            compressors=None,
        )
        arr[...] = np.asarray(v)
    return store
