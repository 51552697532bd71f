"""Reading one granule in few round trips: a head read, block misses, one coalesced prefetch.

Virtualizing a remote granule costs round trips, not bytes: h5py walks the HDF5 metadata
with dozens of small dependent reads, and loading the coordinates reads each chunk again
for every open (``to_virtual_dataset``, then the raw open). :class:`GranuleBytes` keeps
every byte read of one granule in 64 KiB blocks and answers all of those from memory:

- the first request reads the first 128 KiB (and learns the size from the response), which
  also tells HDF5 from NetCDF-3: the netCDF-4 files in ``tests/data`` keep all their HDF5
  metadata there;
- a read outside what is held fetches the missing blocks it covers, in one request;
- :meth:`GranuleBytes.prefetch` fetches the chunks of the variables to load in one
  ``get_ranges`` call (obstore coalesces them), before anything decodes them.

:meth:`GranuleBytes.registry` hands parsers and :class:`~virtualizarr.manifests.ManifestStore`
a registry that reads this granule through the blocks and anything else from the source.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["BLOCK", "HEAD", "GranuleBytes"]

BLOCK = 64 * 1024
HEAD = 2 * BLOCK


def _runs(blocks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted block indices as runs ``(first, last_exclusive)``."""
    runs: list[tuple[int, int]] = []
    for b in sorted(set(blocks)):
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


class GranuleBytes:
    """The bytes of one granule read so far (whole blocks), and the store they come from.

    Parameters
    ----------
    store
        An obspec store (obstore) that holds the granule.
    path
        The granule's path in ``store``.
    size
        The granule's size if the listing gave it (else learnt from the first response).
    block
        Bytes per block: 64 KiB while walking HDF5 metadata; small when only known
        ranges are read (the coordinates of a granule built from its sidecar).
    """

    def __init__(self, store: Any, path: str, size: int | None = None, block: int = BLOCK) -> None:
        self.block = block
        self.store = store
        self.path = path
        self.size = size
        self.calls = 0  # round trips made (a coalesced get_ranges is one)
        self.bytes_read = 0
        self._blocks: dict[int, bytes] = {}

    # -- fetching ------------------------------------------------------------------------
    def read_head(self, length: int = HEAD) -> bytes:
        """Read the first ``length`` bytes (one request); returns what the file has of them."""
        result = self.store.get(self.path, options={"range": (0, length)})
        data = bytes(result.bytes())
        self.size = int(result.meta["size"])
        self.calls += 1
        self.bytes_read += len(data)
        self._keep(0, data)
        return data

    def _keep(self, start: int, data: bytes) -> None:
        # ``start`` is block aligned; a short tail block is the end of the file.
        for i in range(0, len(data), self.block):
            self._blocks[(start + i) // self.block] = data[i : i + self.block]

    def _size(self) -> int:
        if self.size is None:
            self.size = int(self.store.head(self.path)["size"])
            self.calls += 1
        return self.size

    def _missing(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        size = self._size()
        need: set[int] = set()
        for first, count in ranges:
            start, length = int(first), int(count)
            end = min(start + length, size)
            if length <= 0 or start >= end:
                continue
            need.update(range(start // self.block, (end - 1) // self.block + 1))
        return sorted(b for b in need if b not in self._blocks)

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch every block the ``(offset, length)`` ranges touch that is not held yet,
        in one coalesced ``get_ranges`` call."""
        missing = self._missing(ranges)
        if not missing:
            return
        size = self._size()
        runs = _runs(missing)
        starts = [a * self.block for a, _ in runs]
        ends = [min(b * self.block, size) for _, b in runs]
        parts = self.store.get_ranges(self.path, starts=starts, ends=ends)
        self.calls += 1
        for start, part in zip(starts, parts, strict=True):
            data = bytes(part)
            self.bytes_read += len(data)
            self._keep(start, data)

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (fewer at the end), fetching the blocks not held."""
        start, length = int(start), int(length)
        size = self._size()
        end = min(start + length, size)
        if start >= end:
            return b""
        self.prefetch([(start, end - start)])
        return self._slice(start, end)

    def holds(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` can be answered without a request."""
        return not end > start or all(
            b in self._blocks for b in range(start // self.block, (end - 1) // self.block + 1)
        )

    def _slice(self, start: int, end: int) -> bytes:
        out = bytearray()
        for b in range(start // self.block, (end - 1) // self.block + 1):
            block = self._blocks[b]
            lo = max(start - b * self.block, 0)
            hi = min(end - b * self.block, len(block))
            out += block[lo:hi]
        return bytes(out)

    # -- views -----------------------------------------------------------------------------
    def reader(self) -> _Reader:
        """A file-like object over the granule (for h5py)."""
        return _Reader(self)

    def registry(self, registry: Any, url: str) -> _Registry:
        """``registry`` with ``url`` read through these blocks."""
        return _Registry(registry, url, self)


class _Reader(io.RawIOBase):
    def __init__(self, data: GranuleBytes) -> None:
        super().__init__()
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._data._size()}
        self._pos = base[whence] + offset
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            size = max(self._data._size() - self._pos, 0)
        data = self._data.read(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _Store:
    """The source's store, with one path answered from a :class:`GranuleBytes` when it can."""

    def __init__(self, store: Any, data: GranuleBytes) -> None:
        self._store = store
        self._data = data

    def __getattr__(self, name: str) -> Any:  # prefix, url, ... as the store has them
        return getattr(self._store, name)

    def _mine(self, path: str) -> bool:
        return path.lstrip("/") == self._data.path.lstrip("/")

    @staticmethod
    def _end(start: int, end: int | None, length: int | None) -> int:
        # Callers pass numpy integers (unsigned: a subtraction would wrap): plain ints here.
        return int(end) if end is not None else int(start) + int(length or 0)

    def head(self, path: str) -> Any:
        if self._mine(path) and self._data.size is not None:
            return {"path": path, "size": self._data.size}
        return self._store.head(path)

    def get_range(
        self, path: str, *, start: int, end: int | None = None, length: int | None = None
    ) -> Any:
        if self._mine(path):
            stop = self._end(start, end, length)
            return self._data.read(int(start), stop - int(start))
        return self._store.get_range(path, start=start, end=end, length=length)

    async def get_range_async(
        self, path: str, *, start: int, end: int | None = None, length: int | None = None
    ) -> Any:
        stop = self._end(start, end, length)
        start = int(start)
        if self._mine(path) and self._data.holds(start, stop):
            return self._data._slice(start, min(stop, self._data._size()))
        return await self._store.get_range_async(path, start=start, end=end, length=length)

    def get_ranges(
        self,
        path: str,
        *,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> Any:
        if not self._mine(path):
            return self._store.get_ranges(path, starts=starts, ends=ends, lengths=lengths)
        firsts = [int(s) for s in starts]
        stops = (
            [self._end(s, e, None) for s, e in zip(firsts, ends, strict=True)]
            if ends
            else [s + int(n) for s, n in zip(firsts, lengths or (), strict=True)]
        )
        self._data.prefetch([(s, e - s) for s, e in zip(firsts, stops, strict=True)])
        return [self._data.read(s, e - s) for s, e in zip(firsts, stops, strict=True)]


class _Registry:
    """A registry that resolves one URL to a :class:`_Store` over its blocks."""

    def __init__(self, registry: Any, url: str, data: GranuleBytes) -> None:
        self._registry = registry
        self._url = url
        self._data = data

    def __getattr__(self, name: str) -> Any:  # map, ... as the registry has them
        return getattr(self._registry, name)

    def resolve(self, url: str) -> tuple[Any, str]:
        store, path = self._registry.resolve(url)
        if url == self._url:
            return _Store(store, self._data), path
        return store, path
