"""``refstore coverage``: the concat dim's timeline as facts (JSON) and a picture (PNG).

Facts: present steps (as runs), gaps against the cadence (``[dataset] cadence`` or the
median step), late arrivals (granules placed before the end the store already had),
revisions, quarantined granules, committed granules whose source went missing, and
where the store ended at each snapshot. :func:`gather` is I/O; :func:`find_runs` and
:func:`classify` are pure; :func:`draw` is matplotlib (Agg), readable from one granule
to 20 years of hourly steps (runs are merged, small marks keep a minimum width).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from refstore.config import Config
from refstore.errors import ConfigError
from refstore.models import CommitInfo

__all__ = ["Coverage", "classify", "draw", "find_runs", "gather", "parse_cadence"]

_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}


def parse_cadence(text: str) -> int:
    """Seconds of a cadence like ``6h``, ``1d``, ``30min``, ``PT6H`` or ``P1D``.

    Raises
    ------
    ConfigError
        Not a cadence refstore understands.
    """
    t = text.strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|h|d)", t)
    if m:
        return int(float(m[1]) * _UNITS[m[2]])
    m = re.fullmatch(r"p(?:(\d+)d)?(?:t(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?)?", t)
    if m and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    raise ConfigError(
        f"[dataset] cadence {text!r} is not understood.",
        'Use e.g. cadence = "6h", "1d", "30min" or an ISO 8601 duration like "PT6H".',
    )


def find_runs(
    values: Any, cadence: float
) -> tuple[list[tuple[Any, Any, int]], list[dict[str, Any]]]:
    """Pure: (runs of steps at most 1.5 cadences apart as (first, last, steps), gaps).

    Each gap is ``{"after", "before", "missing_steps"}``: the last step before the hole,
    the first after it, and how many steps at the cadence fit between.
    """
    import numpy as np

    arr = np.asarray(values)
    if arr.size == 0:
        return [], []
    num = arr.astype("datetime64[s]").astype(np.int64) if arr.dtype.kind == "M" else arr
    breaks = np.nonzero(np.diff(num) > 1.5 * cadence)[0] if arr.size > 1 else np.array([], int)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [arr.size - 1]])
    runs = [(arr[s], arr[e], int(e - s + 1)) for s, e in zip(starts, ends, strict=True)]
    gaps = [
        {
            "after": arr[i],
            "before": arr[i + 1],
            "missing_steps": max(1, round(float(num[i + 1] - num[i]) / cadence) - 1),
        }
        for i in breaks
    ]
    return runs, gaps


def classify(commits: list[CommitInfo]) -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
    """Pure: (late placements, revised placements, per-snapshot store ends), oldest first.

    Late: a key seen for the first time, placed before the end the store already had.
    Revised: a key placed again with another revision.
    """
    from refstore.admit import placed_value

    seen: dict[str, str] = {}
    end = 0
    late, revised, ends = [], [], []
    for c in commits:
        for p in c.placements:
            if p.key not in seen and p.offset < end:
                late.append((p, c.snapshot))
            elif p.key in seen and seen[p.key] != p.revision:
                revised.append((p, c.snapshot))
            seen[p.key] = p.revision
        if c.placements:
            last = max(c.placements, key=lambda p: p.offset + p.length)
            end = max(end, last.offset + last.length)
            ends.append(
                {"snapshot": c.snapshot, "written_at": c.written_at, "end": placed_value(last.last)}
            )
    return late, revised, ends


@dataclass
class Coverage:
    """Everything the picture shows, JSON-ready via :meth:`to_dict`."""

    concat_dim: str
    cadence_s: float | None = None
    cadence_inferred: bool = True
    start: Any = None
    end: Any = None
    steps: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    revised: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (values as ISO text)."""
        from refstore.virtualize import format_value

        def fmt(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: fmt(v) for k, v in x.items()}
            if isinstance(x, list):
                return [fmt(v) for v in x]
            if isinstance(x, str | int | float | bool) or x is None:
                return x
            return format_value(x)

        out: dict[str, Any] = fmt(asdict(self))
        return out


def _placed(p: Any, snapshot: str | None = None, **extra: Any) -> dict[str, Any]:
    from refstore.admit import placed_value

    return {
        "key": p.key,
        "start": placed_value(p.first),
        "end": placed_value(p.last),
        **({"snapshot": snapshot} if snapshot else {}),
        **extra,
    }


def gather(config: Config, cadence: str | None = None) -> Coverage:
    """The coverage facts of the store's head (see the module doc).

    Raises
    ------
    ConfigError
        ``cadence`` cannot be parsed.
    """
    import numpy as np

    from refstore.api import open_store
    from refstore.ledger import Ledger
    from refstore.maintenance import full_history
    from refstore.models import Status

    cov = Coverage(concat_dim=config.concat_dim)
    store = open_store(config)
    ledger = Ledger(config.ledger)
    try:
        values = np.asarray([])
        commits: list[CommitInfo] = []
        if store.exists() and store.head() is not None:
            ds = store.open_dataset(None)
            if config.concat_dim in ds.variables:
                values = np.sort(np.asarray(ds[config.concat_dim].values))
            commits = full_history(store, ledger, store.head_snapshot())
        if cadence:
            cov.cadence_s, cov.cadence_inferred = float(parse_cadence(cadence)), False
        elif values.size > 1:
            num = (
                values.astype("datetime64[s]").astype(np.int64)
                if values.dtype.kind == "M"
                else values
            )
            cov.cadence_s = float(np.median(np.diff(num)))
        runs, gaps = find_runs(values, cov.cadence_s or 1.0)
        cov.steps = int(values.size)
        if values.size:
            cov.start, cov.end = values[0], values[-1]
        cov.runs = [{"start": a, "end": b, "steps": n} for a, b, n in runs]
        cov.gaps = gaps
        late, revised, ends = classify(commits)
        cov.late = [_placed(p, s) for p, s in late]
        cov.revised = [_placed(p, s) for p, s in revised]
        cov.snapshots = ends
        placed = {p.key: p for p in ledger.placements()}
        for key, since in ledger.missing():
            if key in placed:
                cov.missing.append(_placed(placed[key], since=since))
        for r in ledger.iter_rows(Status.QUARANTINED):
            cov.quarantined.append(
                {
                    "key": r.key,
                    "start": _iso(r.start),
                    "end": _iso(r.end),
                    "reason": r.reason,
                }
            )
    finally:
        ledger.close()
    return cov


def _iso(text: str | None) -> Any:
    import numpy as np

    if not text:
        return None
    try:
        return np.datetime64(text.replace("Z", ""), "s")
    except ValueError:
        return text


def draw(cov: Coverage, path: str, title: str = "") -> None:
    """Write the timeline PNG: one lane per kind of fact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    is_time = isinstance(cov.start, np.datetime64)

    def x(v: Any) -> float:
        if v is None:
            return float("nan")
        if is_time:
            # matplotlib dates: days since its epoch, 1970-01-01
            return float(np.datetime64(v, "s").astype(np.int64)) / 86400.0
        return float(v)

    step = (cov.cadence_s or 86400) / 86400 if is_time else (cov.cadence_s or 1)
    lo = x(cov.start) - step if cov.steps else 0.0
    hi = x(cov.end) + step if cov.steps else 1.0
    span = hi - lo
    minw = span / 800  # the narrowest mark still visible

    lanes = ["snapshots", "missing source", "quarantined", "revised", "late", "gaps", "present"]
    fig, ax = plt.subplots(figsize=(13, 3.8), dpi=110)
    colors = {
        "present": "#2a9d8f",
        "gaps": "#e63946",
        "late": "#f4a261",
        "revised": "#7b2cbf",
        "quarantined": "#222222",
        "missing source": "#9e9e9e",
        "snapshots": "#457b9d",
    }

    def bars(lane: str, spans: list[tuple[float, float]]) -> None:
        y = lanes.index(lane)
        segs = [(a, max(b - a, minw)) for a, b in spans if not np.isnan(a)]
        if segs:
            ax.broken_barh(segs, (y - 0.35, 0.7), facecolors=colors[lane])

    bars("present", [(x(r["start"]), x(r["end"]) + step) for r in cov.runs])
    bars("gaps", [(x(g["after"]) + step, x(g["before"])) for g in cov.gaps])
    for lane, items in (
        ("late", cov.late),
        ("revised", cov.revised),
        ("missing source", cov.missing),
        ("quarantined", cov.quarantined),
    ):
        known = [i for i in items if i.get("start") is not None]
        bars(lane, [(x(i["start"]), x(i["end"] or i["start"]) + step) for i in known])
    ends = [x(s["end"]) for s in cov.snapshots if s.get("end") is not None]
    if ends:
        y = lanes.index("snapshots")
        ax.vlines(ends, y - 0.35, y + 0.35, colors=colors["snapshots"], linewidth=0.8)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(
        [
            f"{lane} ({n})"
            for lane, n in zip(
                lanes,
                [
                    len(cov.snapshots),
                    len(cov.missing),
                    len(cov.quarantined),
                    len(cov.revised),
                    len(cov.late),
                    len(cov.gaps),
                    cov.steps,
                ],
                strict=True,
            )
        ]
    )
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlim(lo, hi)
    if is_time:
        locator = mdates.AutoDateLocator(minticks=4, maxticks=12)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    cadence = _human(cov.cadence_s) if cov.cadence_s else "?"
    head = title or "coverage"
    ax.set_title(
        f"{head}: {cov.steps} {cov.concat_dim} steps, {cov.start and str(cov.start)[:19]} .. "
        f"{cov.end and str(cov.end)[:19]}, cadence {cadence}"
        f"{' (inferred)' if cov.cadence_inferred else ''}",
        fontsize=10,
        loc="left",
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
