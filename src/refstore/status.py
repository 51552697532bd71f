"""What ``refstore status`` reports: ledger counts, quarantine reasons, coverage, runs."""

from __future__ import annotations

from typing import Any

from refstore.admit import from_json_value
from refstore.config import Config
from refstore.ledger import Ledger
from refstore.models import Status
from refstore.sources import source_for
from refstore.store import Store
from refstore.virtualize import format_value

__all__ = ["gather_status"]


def gather_status(config: Config) -> dict[str, Any]:
    """A JSON-ready summary of the store and its ledger."""
    ledger = Ledger(config.ledger)
    try:
        source = source_for(config)
        store = Store(config.repo, (source.container(),), source)
        head = store.head() if store.exists() else None
        return {
            "repo": config.repo,
            "ledger": config.ledger,
            "export": config.export,
            "head": head.snapshot if head else None,
            "start": format_value(from_json_value(head.first)) if head else None,
            "end": format_value(from_json_value(head.last)) if head else None,
            "length": head.length if head else 0,
            "counts": ledger.counts(),
            "quarantined": [
                {"key": r.key, "reason": r.reason, "attempts": r.attempts}
                for r in ledger.iter_rows(Status.QUARANTINED)
            ],
            "runs": ledger.runs(),
        }
    finally:
        ledger.close()
