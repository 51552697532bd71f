"""What the CLI writes to stderr: quiet by default, everything with ``-v``, one JSON
object per event with ``--log-json``.

Quiet means no third-party noise on a normal run: Icechunk's Rust log lines (its
``LocalFileSystem … not safe for concurrent commits`` WARN; refstore holds its own lock)
are filtered through ``ICECHUNK_LOG`` *before* Icechunk is imported (so the CLI need
not import it), and zarr/numcodecs warnings refstore knows to be harmless are ignored.
This module imports nothing heavy.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from typing import Any

__all__ = [
    "KNOWN_WARNINGS",
    "JsonFormatter",
    "configure",
    "emit_error",
    "import_sqlite_utils_lightly",
]

# (message regex, why it is harmless for refstore)
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"The data type \(.*\) does not have a Zarr V3 specification", "|S and other v2 dtypes"),
    (r"Numcodecs codecs are not in the Zarr version 3 specification", "kerchunk refs codecs"),
    (r"The codec .* is currently not part in the Zarr format 3 specification", "same"),
    (r"The LocalFileSystem storage is not safe", "refstore holds its own lock"),
    (r"The 'fastparquet' engine is deprecated", "kerchunk/fsspec's Parquet engine"),
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event and any ``extra`` fields."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        event |= {k: v for k, v in vars(record).items() if k not in self._STANDARD}
        if record.exc_info:
            event["traceback"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure(*, verbose: bool, log_json: bool, environ: Any = os.environ) -> None:
    """Set up logging and warning filters for one CLI process."""
    if log_json:
        # Icechunk's Rust log lines are not JSON: keep the stream parseable.
        environ.setdefault("ICECHUNK_LOG", "error")
    if not verbose:
        if "icechunk" in sys.modules and "ICECHUNK_LOG" not in environ:
            sys.modules["icechunk"].set_logs_filter("error")  # imported already (tests)
        environ.setdefault("ICECHUNK_LOG", "error")
        for pattern, _ in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
    logging.captureWarnings(verbose)  # with -v, warnings become log events (JSON too)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_json else logging.Formatter("refstore: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose or log_json else logging.WARNING)


def emit_error(message: str, hint: str, exit_code: int, *, log_json: bool) -> None:
    """Report a fatal error: one line and a hint, or one JSON event."""
    if log_json:
        record = {"level": "error", "event": message, "hint": hint, "exit_code": exit_code}
        print(json.dumps(record), file=sys.stderr)
        return
    print(f"refstore: error: {message}", file=sys.stderr)
    print(f"  hint: {hint}", file=sys.stderr)


def import_sqlite_utils_lightly() -> None:
    """Import sqlite-utils without pandas (0.4 s of a 0.6 s ``refstore ls``).

    ``sqlite_utils.db`` imports pandas only to map ``pd.Timestamp`` columns to TEXT, which
    refstore never inserts. pandas stays importable afterwards (xarray needs it).
    """
    if "sqlite_utils.db" in sys.modules or "pandas" in sys.modules:
        return
    sys.modules["pandas"] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        import sqlite_utils.db  # noqa: F401
    except ImportError:
        pass
    finally:
        del sys.modules["pandas"]
