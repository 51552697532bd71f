"""Every CLI command is in README's command table (as sqlite-utils checks its docs)."""

from __future__ import annotations

import re
from pathlib import Path

from refstore.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_command_is_in_the_readme_table() -> None:
    text = README.read_text()
    missing = [
        name for name in sorted(cli.commands) if not re.search(rf"\| `refstore {name}[ `]", text)
    ]
    assert missing == []
