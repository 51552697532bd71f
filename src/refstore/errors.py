"""refstore's exception tree.

One root, :class:`RefstoreError`, carrying a one-sentence ``hint`` (the fix) and the
process ``exit_code`` the CLI uses. Subclasses are grouped by what the caller does about
them, as in icechunk-python: retry later (:class:`SourceError`), skip the granule and
record why (:class:`GranuleError`), fix the configuration (:class:`ConfigError`), look
elsewhere (:class:`NotFoundError`, also a ``KeyError``) or wait for another run
(:class:`ConflictError`). This module imports nothing of ours.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "GranuleError",
    "IntegrityError",
    "NotFoundError",
    "RefstoreError",
    "SourceError",
    "StoreError",
    "TagExistsError",
]


class RefstoreError(Exception):
    """Root of every error refstore raises on purpose.

    Parameters
    ----------
    message
        What went wrong, naming the granule, file or setting involved.
    hint
        The fix, in one sentence.
    """

    exit_code: int = 1
    default_hint: str = "Run with --verbose for details."

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RefstoreError, ValueError):
    """The configuration (file, environment or flags) is invalid."""

    exit_code = 2
    default_hint = "Fix refstore.toml (see `refstore init --help`) and run again."


class SourceError(RefstoreError, OSError):
    """The granule source could not be listed or read; retrying later may succeed."""

    exit_code = 3
    default_hint = "Check that the source is reachable and readable, then run again."


class GranuleError(RefstoreError):
    """One granule cannot be virtualized or would break the store; it is quarantined."""

    exit_code = 4
    default_hint = "Fix or replace the file upstream, then run `refstore retry`."

    def __init__(self, message: str, hint: str | None = None, *, key: str = "") -> None:
        super().__init__(message, hint)
        self.key = key


class StoreError(RefstoreError):
    """The Icechunk repository or the export could not be read or written."""

    exit_code = 5
    default_hint = "Check the [store] settings and that the repository path is writable."


class LayoutError(StoreError):
    """The store's layout cannot be expressed in the requested output (a rectilinear
    chunk grid in a zarr v2 kerchunk export)."""

    default_hint = (
        "Open the Icechunk repository instead: refstore.open_dataset(config), or icechunk + "
        'xarray with zarr.config.set({"array.rectilinear_chunks": True}).'
    )


class IntegrityError(RefstoreError):
    """What the store serves differs from the source files (``refstore verify``)."""

    exit_code = 8
    default_hint = (
        "Run `refstore sync` to re-read revised granules; restore or re-publish missing "
        "sources; `refstore status` lists what changed."
    )


class NotFoundError(RefstoreError, KeyError):
    """A snapshot, tag, date, repository or granule does not exist."""

    exit_code = 6
    default_hint = "Run `refstore log` to list the snapshots and tags that exist."

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ConflictError(RefstoreError):
    """Another sync holds the store, or the store moved under us."""

    exit_code = 7
    default_hint = "Another `refstore sync` is running on this store; wait for it and run again."


class TagExistsError(RefstoreError):
    """A tag name asked for is taken; the sync itself committed and exported."""

    exit_code = 9
    default_hint = "Choose a tag name that is not taken; `refstore log` lists the tags."
