"""Shared plumbing for the loopback test servers: a threaded HTTP/1.1 server bound to 127.0.0.1.

Every server in this package listens on a loopback address only (``127.0.0.1`` by default; any
other host is refused), asks the kernel for a free port (port 0), serves each connection in its own
daemon thread with a bounded socket timeout, and on ``stop()`` shuts the listener *and every open
keep-alive connection* down, so no handler thread keeps serving after the server is stopped.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

LOOPBACK_HOST = "127.0.0.1"


def check_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback IP literal, else raise ``ValueError``."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"test servers bind to loopback IP literals only, got {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"test servers bind to loopback addresses only, got {host!r}")
    return host


class _TrackingHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that remembers its owner and its open client connections."""

    daemon_threads = True
    allow_reuse_address = False  # port 0 gives a fresh port anyway

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.owner: Any = None
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class _Fault:
    remaining: int
    status: int = 503
    seconds: float = 0.0


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base: HTTP/1.1 keep-alive, bounded socket timeout, no stderr logging."""

    protocol_version = "HTTP/1.1"
    server_version = "refstore-test"
    sys_version = ""
    # Socket timeout for every connection (idle keep-alive included); set per server in start().
    timeout = 30.0

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        """Send a complete response with Content-Length (required for HTTP/1.1 keep-alive)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def apply_faults(
        self,
        *,
        head_only: bool = False,
        before_send: Callable[[int], object] | None = None,
    ) -> int | None:
        """Apply injected delay/failure; return the status sent if the request was answered.

        ``before_send(status)`` runs before the failure response is written (for counters).
        """
        srv: LoopbackHTTPServer = self.owner
        if srv.latency > 0:
            srv.sleep(srv.latency)  # a link far from the server: every request pays it
        delay = srv._take_fault(srv._delays)
        if delay is not None:
            srv.sleep(delay.seconds)
        failure = srv._take_fault(srv._failures)
        if failure is None:
            return None
        if before_send is not None:
            before_send(failure.status)
        body = f"injected failure {failure.status}\n".encode()
        self.send_body(failure.status, body, headers={"Retry-After": "0"}, head_only=head_only)
        return failure.status


class LoopbackHTTPServer:
    """Base class: context manager running ``handler_class`` on a free loopback port in a thread."""

    handler_class: ClassVar[type[QuietHandler]] = QuietHandler

    def __init__(
        self,
        *,
        host: str = LOOPBACK_HOST,
        port: int = 0,
        request_timeout: float = 30.0,
        latency: float = 0.0,
    ) -> None:
        self.host = check_loopback(host)
        self.latency = latency  # seconds every request waits before it is answered
        self._requested_port = port
        self.request_timeout = request_timeout
        self._httpd: _TrackingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._fault_lock = threading.Lock()
        self._failures: list[_Fault] = []
        self._delays: list[_Fault] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        handler = type(
            f"{self.handler_class.__name__}Bound",
            (self.handler_class,),
            {"timeout": self.request_timeout},
        )
        httpd = _TrackingHTTPServer((self.host, self._requested_port), handler)
        httpd.owner = self
        self._stopping.clear()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()  # wakes up injected delays
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    # -- fault injection -----------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` requests (after any injected delay) with ``status``.

        Successive calls queue up: ``fail_next(1, 500); fail_next(2, 429)`` fails 3 requests.
        """
        with self._fault_lock:
            self._failures.append(_Fault(n, status=status))

    def delay_next(self, n: int, seconds: float) -> None:
        """Sleep ``seconds`` before answering each of the next ``n`` requests."""
        with self._fault_lock:
            self._delays.append(_Fault(n, seconds=seconds))

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._failures.clear()
            self._delays.clear()

    def _take_fault(self, queue: list[_Fault]) -> _Fault | None:
        with self._fault_lock:
            while queue and queue[0].remaining <= 0:
                queue.pop(0)
            if not queue:
                return None
            queue[0].remaining -= 1
            return queue[0]

    def sleep(self, seconds: float) -> None:
        """Sleep in a handler thread, returning early when the server is being stopped."""
        self._stopping.wait(seconds)
