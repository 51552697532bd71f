"""Pure planning: rules, and invariants checked with Hypothesis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from refstore.models import Granule, LedgerRow, Status
from refstore.plan import batches, plan_sync


def g(key: str, rev: str = "1") -> Granule:
    return Granule(key=key, url=f"file:///{key}", revision=rev)


def row(key: str, status: Status, rev: str = "1", placed: str | None = None) -> LedgerRow:
    """A ledger row; committed ones (or any given ``placed``) are in the store."""
    if status is Status.COMMITTED and placed is None:
        placed = rev
    return LedgerRow(
        key=key,
        url=f"file:///{key}",
        revision=rev,
        status=status,
        offset=None if placed is None else 0,
        length=None if placed is None else 4,
        placed_revision=placed,
    )


def test_rules() -> None:
    rows = {
        "done": row("done", Status.COMMITTED),
        "bad": row("bad", Status.QUARANTINED),
        "bad2": row("bad2", Status.QUARANTINED),
        "crashed": row("crashed", Status.VIRTUALIZED),
        "changed": row("changed", Status.COMMITTED),
        "gone": row("gone", Status.COMMITTED),
    }
    plan = plan_sync(
        [g("done"), g("bad"), g("bad2", "2"), g("crashed"), g("changed", "2"), g("new")], rows
    )
    assert [x.key for x in plan.new] == ["crashed", "new"]
    assert [x.key for x in plan.revised] == ["bad2", "changed"]
    assert (plan.unchanged, plan.quarantined, plan.missing) == (1, 1, ("gone",))
    assert [x.key for x in plan.todo] == ["bad2", "changed", "crashed", "new"]
    assert plan.replacing == ("changed",)


def test_a_granule_in_the_store_is_always_a_replacement() -> None:
    """Whatever its status, a key placed by the history is replaced, never appended."""
    rows = {
        "broken": row("broken", Status.QUARANTINED, "2", placed="1"),
        "killed": row("killed", Status.VIRTUALIZED, "2", placed="1"),
        "waiting": row("waiting", Status.REVISED, "2", placed="1"),
        "back": row("back", Status.QUARANTINED, "2", placed="1"),
        "never": row("never", Status.QUARANTINED, "2"),
    }
    found = [g("broken", "3"), g("killed", "2"), g("waiting", "2"), g("back", "1"), g("never", "3")]
    plan = plan_sync(found, rows)
    assert [x.key for x in plan.todo] == ["broken", "killed", "never", "waiting"]
    assert plan.replacing == ("broken", "killed", "waiting")
    assert plan.reverted == ("back",)
    assert plan_sync([], rows).missing == ("back", "broken", "killed", "waiting")


def test_a_config_change_requeues_what_it_quarantined() -> None:
    bad = LedgerRow("bad", "file:///bad", "1", Status.QUARANTINED, fingerprint="old")
    assert plan_sync([g("bad")], {"bad": bad}, fingerprint="old").todo == ()
    plan = plan_sync([g("bad")], {"bad": bad}, fingerprint="new")
    assert [x.key for x in plan.todo] == ["bad"] and plan.requeued == ("bad",)
    assert plan_sync([], {"bad": bad}, complete=False, fingerprint="new").requeued == ("bad",)


keys = st.lists(st.text("abcdef0123456789", min_size=1, max_size=6), unique=True, max_size=30)


@given(keys, st.randoms())
def test_discovery_order_does_not_matter(names: list[str], rnd) -> None:  # type: ignore[no-untyped-def]
    granules = [g(n) for n in names]
    shuffled = granules[:]
    rnd.shuffle(shuffled)
    rows = {n: row(n, Status.COMMITTED) for n in names[: len(names) // 2]}
    assert plan_sync(granules, rows) == plan_sync(shuffled, rows)


@given(keys)
def test_second_plan_after_commit_is_empty(names: list[str]) -> None:
    granules = [g(n) for n in names]
    first = plan_sync(granules, {})
    assert {x.key for x in first.todo} == set(names)
    committed = {x.key: row(x.key, Status.COMMITTED, x.revision) for x in first.todo}
    second = plan_sync(granules, committed)
    assert second.todo == () and second.unchanged == len(names)


@given(st.lists(st.integers(), max_size=50), st.integers(1, 7))
def test_batches_keep_order_and_bound(items: list[int], size: int) -> None:
    out = list(batches(items, size))
    assert [x for b in out for x in b] == items
    assert all(1 <= len(b) <= size for b in out)


def test_incremental_listing_reports_nothing_missing_and_retries_pending_rows() -> None:
    rows = {
        "done": row("done", Status.COMMITTED),
        "bad": row("bad", Status.QUARANTINED),
        "crashed": row("crashed", Status.VIRTUALIZED),
        "queued": row("queued", Status.NEW),
    }
    plan = plan_sync([g("arrived")], rows, complete=False)
    assert plan.missing == ()
    assert [x.key for x in plan.todo] == ["arrived", "crashed", "queued"]
    assert plan_sync([g("arrived")], rows).missing == ("done",)


def test_unknown_revision_keeps_the_ledgers() -> None:
    rows = {"done": row("done", Status.COMMITTED), "bad": row("bad", Status.QUARANTINED)}
    plan = plan_sync([g("done", ""), g("bad", ""), g("fresh", "")], rows)
    assert plan.revised == () and plan.unchanged == 1 and plan.quarantined == 1
    assert [x.key for x in plan.new] == ["fresh"]
