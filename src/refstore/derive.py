"""The loaded variables of a sidecar-built granule without a byte of the granule, once proved.

Real DAAC sidecars carry every attribute and chunk reference but no values, so a granule
built from one still read its coordinates (one ranged GET of 9-24 KB). This module lets
later granules skip that read when the first one *proved* where the values come from:

- **the concat coordinate** follows a :class:`~refstore.time_rules.Rule` learnt from
  the real values of the first sidecar-built granule of its kind
  (:mod:`refstore.time_rules`): a global attribute (MUR25 ``start_time``), the midpoint
  of a start/end pair (GAMSSA), a date-time in the granule's file name (GPM IMERG:
  ``20051022-S000000``; its ``Grid`` attributes hold no time), or raw values that repeat
  while only the sidecar's ``units`` move (RSS SSMIS), kept only if it reproduces the
  real raw values exactly in the sidecar's own units, calendar and dtype;
- **the other loaded variables** (lat, lon, crs: written once, compared on later
  granules) take the proved granule's values when the sidecar describes them exactly as
  it did (shape, dtype, codecs, fill value, attributes *and* compressed chunk lengths):
  :func:`describe` is that description, and its hash (:func:`key`) names the proof.
- **an uncompressed array** says nothing by its length (any grid of that shape has it).
  A 1-D one (RSS SSMIS lat/lon) is derived only when the proved values form a regular
  grid (:func:`regular_grid`: each value ``first + i * step`` to one unit in the last
  place, as a producer writes a fixed grid from a formula) and the sidecar places it at the
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from refstore.coords import plain
from refstore.time_rules import Rule, apply, learn

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
_MOVING = ("units",)  # the concat coordinate's attributes a rule reads, not compares


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
                # Raw bytes: any grid of this shape has these lengths. Where they lie is
                # described too, and only a regular grid is derived (check_or_learn).
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
