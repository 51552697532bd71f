"""One writer per store: a file lock beside the ledger.

Icechunk's local storage is not safe for concurrent commits, and two syncs appending
the same granule would duplicate a time step, so every writing command holds this lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from refstore.errors import ConflictError, StoreError

__all__ = ["store_lock"]


@contextmanager
def store_lock(ledger_path: str | Path, wait: float = 0) -> Iterator[None]:
    """Hold the store's lock; wait up to ``wait`` seconds for it.

    Raises
    ------
    ConflictError
        Another process holds the lock after ``wait`` seconds.
    """
    from filelock import FileLock, Timeout

    path = Path(f"{ledger_path}.lock")
    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=wait)
    except Timeout:  # a TimeoutError, so an OSError too: first
        raise ConflictError(
            f"Another refstore process is writing this store (lock {path}).",
            "Wait for it to finish, or pass --wait SECONDS to queue behind it.",
        ) from None
    except OSError as e:
        raise StoreError(
            f"Cannot write the state folder {path.parent}: {e.strerror or e}.",
            f"Make {path.parent} writable (or point [store] ledger elsewhere) and free "
            "some space; status, log and verify need no write access.",
        ) from e
    try:
        yield
    finally:
        lock.release()
