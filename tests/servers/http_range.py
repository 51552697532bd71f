"""Loopback HTTP/1.1 file server with byte-range support, optional bearer auth and fault injection.

Serves the files under ``root`` (read-only, no directory listings) at
``http://127.0.0.1:<port>/<relpath>``:

- ``GET`` / ``HEAD`` with ``Content-Length``, ``Accept-Ranges: bytes``, a strong ``ETag`` (hash of
  the file content and mtime, so it is stable until the file changes) and ``Last-Modified``.
- ``Range: bytes=a-b``, ``bytes=a-`` and suffix ``bytes=-n`` -> ``206`` + ``Content-Range``; an
  unsatisfiable range -> ``416`` + ``Content-Range: bytes */size``; a syntactically invalid or
  multi-range header is ignored and the whole file is sent (``200``), as RFC 9110 allows.
- ``If-Match`` (``412`` on mismatch), ``If-None-Match`` (``304``) and ``If-Range`` (full ``200``
  when the validator no longer matches) so clients can detect a file that changed under them.
- ``bearer_token``: when set, requests without ``Authorization: Bearer <token>`` get ``401``.
- thread-safe per-path counters (:class:`PathStats`): requests, requests carrying an
  ``Authorization`` header, bytes of body sent, status codes, served ranges, so a test can
  assert exactly what a client read and which credentials reached this server.
- fault injection: :meth:`RangeHTTPServer.fail_next` (next *n* requests answer ``status``) and
  :meth:`RangeHTTPServer.delay_next` (next *n* requests sleep first); ``latency=`` makes every
  request wait that many seconds (a link from outside the DAAC's region).

Client notes (verified in ``tests/test_servers.py``):

- obstore: ``HTTPStore.from_url(server.base_url, client_options={"allow_http": True,
  "default_headers": {"Authorization": "Bearer <token>"}})``; ``allow_http`` is required for
  ``http://`` URLs. obstore needs ``Last-Modified`` on GET/HEAD responses, which is why it is sent.
- fsspec: ``fsspec.filesystem("http", headers={"Authorization": ...})`` works as is (aiohttp).
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ._base import LoopbackHTTPServer, QuietHandler

__all__ = ["PathStats", "RangeHTTPServer", "parse_range"]

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_CHUNK = 256 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Parse a single ``Range`` header against a file of ``size`` bytes.

    Returns ``(start, end_exclusive)`` for a satisfiable range, ``None`` when the header is absent
    or must be ignored (invalid syntax, multiple ranges), or ``"unsatisfiable"`` (-> 416).
    """
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if match is None:  # includes "bytes=0-1,5-6" (multi-range): ignore, send everything
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(int(last) + 1, size)
    return (start, end)


@dataclass
class PathStats:
    """What the server did for one path (a snapshot; counters are kept under a lock)."""

    requests: int = 0
    gets: int = 0
    heads: int = 0
    range_requests: int = 0
    authorized: int = 0  # requests that carried an Authorization header (any value)
    bytes_sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # served [start, end) of 206s

    def copy(self) -> PathStats:
        return PathStats(
            self.requests,
            self.gets,
            self.heads,
            self.range_requests,
            self.authorized,
            self.bytes_sent,
            Counter(self.statuses),
            list(self.ranges),
        )


class _RangeHandler(QuietHandler):
    def do_GET(self) -> None:
        self._serve(head_only=False)

    def do_HEAD(self) -> None:
        self._serve(head_only=True)

    def _serve(self, *, head_only: bool) -> None:
        srv: RangeHTTPServer = self.owner
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        is_range = self.headers.get("Range") is not None
        authorized = self.headers.get("Authorization") is not None
        srv._count(rel, method=self.command, is_range=is_range, authorized=authorized)

        # Counters are updated *before* bytes go out, so a client that got its response
        # always sees them (no race with the handler thread).
        if self.apply_faults(head_only=head_only, before_send=lambda s: srv._count_status(rel, s)):
            return

        token = srv.bearer_token
        if token is not None and self.headers.get("Authorization", "") != f"Bearer {token}":
            srv._count_status(rel, 401)
            self.send_body(
                401,
                b"missing or wrong bearer token\n",
                headers={"WWW-Authenticate": 'Bearer realm="refstore-test"'},
                head_only=head_only,
            )
            return

        path = srv._resolve(rel)
        if path is None:
            srv._count_status(rel, 404)
            self.send_body(404, b"not found\n", head_only=head_only)
            return

        st = path.stat()
        size = st.st_size
        etag = srv.etag(path)
        common = {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }

        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match.strip() != "*" and etag not in _etags(if_match):
            srv._count_status(rel, 412)
            self.send_body(412, b"precondition failed\n", headers=common, head_only=head_only)
            return
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None and (
            if_none_match.strip() == "*" or etag in _etags(if_none_match)
        ):
            srv._count_status(rel, 304)
            self.send_response(304)
            for name, value in common.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        rng = parse_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if rng is not None and if_range is not None and if_range.strip() != etag:
            rng = None  # the representation changed: send it whole
        if rng == "unsatisfiable":
            srv._count_status(rel, 416)
            self.send_body(
                416,
                b"range not satisfiable\n",
                headers={**common, "Content-Range": f"bytes */{size}"},
                head_only=head_only,
            )
            return

        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if isinstance(rng, tuple):
            start, end = rng
            srv._count_status(rel, 206, served=rng)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            start, end = 0, size
            srv._count_status(rel, 200)
            self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start))
        for name, value in common.items():
            self.send_header(name, value)
        self.end_headers()
        if head_only:
            return
        with path.open("rb") as fh:
            fh.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                srv._count_bytes(rel, len(chunk))
                self.wfile.write(chunk)
                remaining -= len(chunk)


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",")}


class RangeHTTPServer(LoopbackHTTPServer):
    """Threaded loopback HTTP/1.1 server for the files under ``root`` (see module docstring).

    >>> with RangeHTTPServer("tests/data", bearer_token="t0k") as srv:  # doctest: +SKIP
    ...     url = srv.url_for("gamssa/day1.nc")
    ...     srv.stats("gamssa/day1.nc").bytes_sent
    """

    handler_class = _RangeHandler

    def __init__(
        self,
        root: str | Path,
        *,
        bearer_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = 30.0,
        latency: float = 0.0,
    ) -> None:
        super().__init__(host=host, port=port, request_timeout=request_timeout, latency=latency)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(self.root)
        self.bearer_token = bearer_token
        self._lock = threading.Lock()
        self._stats: dict[str, PathStats] = {}
        self._etag_cache: dict[tuple[Path, int, int], str] = {}

    # -- urls ----------------------------------------------------------------------------------
    def url_for(self, relpath: str | Path) -> str:
        """Absolute URL of a file given relative to ``root`` (or as an absolute path under it)."""
        p = Path(relpath)
        if p.is_absolute():
            p = p.resolve().relative_to(self.root)
        return f"{self.base_url}/{p.as_posix()}"

    # -- counters ------------------------------------------------------------------------------
    def _count(self, rel: str, *, method: str, is_range: bool, authorized: bool = False) -> None:
        with self._lock:
            st = self._stats.setdefault(rel, PathStats())
            st.requests += 1
            st.authorized += authorized
            st.gets += method == "GET"
            st.heads += method == "HEAD"
            st.range_requests += is_range

    def _count_status(
        self, rel: str, status: int, *, served: tuple[int, int] | None = None
    ) -> None:
        with self._lock:
            st = self._stats.setdefault(rel, PathStats())
            st.statuses[status] += 1
            if served is not None:
                st.ranges.append(served)

    def _count_bytes(self, rel: str, n: int) -> None:
        with self._lock:
            self._stats.setdefault(rel, PathStats()).bytes_sent += n

    def stats(self, relpath: str) -> PathStats:
        """Snapshot of the counters of one path (relative to root, no leading slash)."""
        with self._lock:
            return self._stats.get(relpath.lstrip("/"), PathStats()).copy()

    def all_stats(self) -> dict[str, PathStats]:
        with self._lock:
            return {k: v.copy() for k, v in self._stats.items()}

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(s.requests for s in self._stats.values())

    @property
    def authorization_headers(self) -> int:
        """Requests (any path) that carried an ``Authorization`` header."""
        with self._lock:
            return sum(s.authorized for s in self._stats.values())

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.bytes_sent for s in self._stats.values())

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    # -- files ---------------------------------------------------------------------------------
    def _resolve(self, rel: str) -> Path | None:
        if not rel:
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def etag(self, path: str | Path) -> str:
        """Strong ETag of a file: sha256 of (content, size, mtime_ns), cached per (size, mtime)."""
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        st = p.stat()
        key = (p, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._etag_cache.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        tag = f'"{h.hexdigest()[:32]}"'
        with self._lock:
            self._etag_cache[key] = tag
        return tag
