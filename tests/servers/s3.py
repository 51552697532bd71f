"""Loopback S3 for tests: moto's ``ThreadedMotoServer`` on ``127.0.0.1`` and a free port.

Credentials are fixed fakes (moto accepts any signature): :data:`ACCESS_KEY_ID`,
:data:`SECRET_ACCESS_KEY`, region :data:`REGION` (``us-west-2``, where NASA Earthdata lives).

Options that were needed against the loopback endpoint (verified in ``tests/test_servers.py``):

- boto3: ``endpoint_url``, explicit keys and region, path-style addressing
  (``Config(s3={"addressing_style": "path"})``); ``create_bucket`` outside us-east-1 needs
  ``CreateBucketConfiguration={"LocationConstraint": region}``.
- obstore: ``S3Store(bucket, endpoint=endpoint_url, access_key_id=..., secret_access_key=...,
  region=..., client_options={"allow_http": True})`` -- ``allow_http`` is mandatory for an
  ``http://`` endpoint; with an explicit ``endpoint`` obstore uses path-style requests already
  (``virtual_hosted_style_request`` defaults to False). See :meth:`MotoS3Server.obstore_store`.
- icechunk: ``icechunk.s3_storage(bucket=..., prefix=..., endpoint_url=..., allow_http=True,
  access_key_id=..., secret_access_key=..., region=..., force_path_style=True)``. Measured with
  icechunk 2.3: against the ``127.0.0.1`` IP endpoint the AWS SDK already falls back to path style
  and the storage worked even without ``allow_http``; but with a host-name endpoint
  (``http://localhost:<port>``) and no ``force_path_style`` it tried to resolve
  ``<bucket>.localhost`` and failed. Set both, always. See :meth:`MotoS3Server.icechunk_storage`.
- With the keys passed explicitly no client looked for other credentials: an ``strace`` of
  ``tests/test_servers.py`` showed TCP connects to 127.0.0.1 only (no IMDS, no DNS).

Caveats:

- moto keeps its state in process-global backends: two ``MotoS3Server`` instances in one process
  share buckets. :meth:`MotoS3Server.reset` (``POST /moto-api/reset``) wipes *all* moto state.
- moto does not check credentials. To simulate expiring Earthdata S3 credentials, pass a
  ``session_token_validator`` (e.g. ``EarthdataAuthServer.is_session_token_valid``): requests whose
  ``X-Amz-Security-Token`` it rejects (``None`` when absent) get S3's ``400 ExpiredToken`` error
  before reaching moto. The server's own boto3 helper client (``make_bucket``, ``upload_file``...)
  is exempt.
- Every request is logged in :attr:`MotoS3Server.requests` (method, bucket/key path, Range, status).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, unquote

from ._base import LOOPBACK_HOST, check_loopback

if TYPE_CHECKING:
    import icechunk
    from obstore.store import S3Store

__all__ = ["ACCESS_KEY_ID", "REGION", "SECRET_ACCESS_KEY", "MotoS3Server", "S3Request"]

ACCESS_KEY_ID = "refstore-test-access-key"
SECRET_ACCESS_KEY = "refstore-test-secret-key"
REGION = "us-west-2"

_EXPIRED_TOKEN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ExpiredToken</Code>'
    b"<Message>The provided token has expired.</Message>"
    b"<RequestId>refstore-test</RequestId></Error>"
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class S3Request:
    method: str
    path: str  # "/bucket/key" as sent (path-style), unquoted
    range: str | None
    session_token: str | None
    status: int


class _Middleware:
    """WSGI wrapper in front of moto: logs requests and optionally rejects expired tokens."""

    def __init__(self, app: WSGIApp, owner: MotoS3Server) -> None:
        self.app = app
        self.owner = owner

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = unquote(environ.get("PATH_INFO", ""))
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN")
        if token is None:
            query = parse_qs(environ.get("QUERY_STRING", ""))
            token = (query.get("X-Amz-Security-Token") or [None])[0]
        method = environ.get("REQUEST_METHOD", "")
        rng = environ.get("HTTP_RANGE")
        validator = self.owner.session_token_validator
        admin = environ.get("HTTP_X_REFSTORE_TEST_ADMIN") == "1"
        if validator is not None and not admin and not validator(token):
            self.owner._log(S3Request(method, path, rng, token, 400))
            start_response(
                "400 Bad Request",
                [
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(_EXPIRED_TOKEN_XML))),
                ],
            )
            return [_EXPIRED_TOKEN_XML]

        def _start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            self.owner._log(S3Request(method, path, rng, token, int(status.split()[0])))
            return start_response(status, headers, exc_info)

        return self.app(environ, _start_response)


class MotoS3Server:
    """moto S3 on a free loopback port; see the module docstring for client options."""

    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY
    region = REGION

    def __init__(
        self,
        *,
        host: str = LOOPBACK_HOST,
        port: int = 0,
        session_token_validator: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.host = check_loopback(host)
        self._requested_port = port
        self.session_token_validator = session_token_validator
        self._moto: Any = None
        self._client: Any = None
        self._lock = threading.Lock()
        self._requests: list[S3Request] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        if self._moto is not None:
            raise RuntimeError("MotoS3Server already started")
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from moto.server import ThreadedMotoServer

        class _QuietHandler(MotoRequestHandler):
            timeout = 30  # socket timeout per connection, idle keep-alive included

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        moto = ThreadedMotoServer(ip_address=self.host, port=self._requested_port, verbose=False)
        moto.start()
        # ThreadedMotoServer has no hook for middleware or a handler class: patch its werkzeug
        # server (app and RequestHandlerClass are read per request) before any request is made.
        wsgi_server = moto._server
        assert wsgi_server is not None
        wsgi_server.app = _Middleware(wsgi_server.app, self)
        wsgi_server.RequestHandlerClass = _QuietHandler
        self._moto = moto
        return self

    def stop(self) -> None:
        moto = self._moto
        if moto is None:
            return
        self._moto = None
        if self._client is not None:
            self._client.close()
            self._client = None
        moto.stop()  # shutdown() + join the serving thread
        if moto._server is not None:
            moto._server.server_close()  # moto leaves the listening socket open

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
    def port(self) -> int:
        if self._moto is None:
            raise RuntimeError("MotoS3Server is not started")
        return int(self._moto.get_host_and_port()[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def credentials(self) -> dict[str, str]:
        """boto3-style keyword arguments for the fake credentials."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "region_name": self.region,
        }

    # -- boto3 helpers -------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """A (cached) boto3 S3 client pointed at the endpoint, path-style, bounded timeouts."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
                **self.credentials(),
            )

            def _mark_admin(request: Any, **_: Any) -> None:
                request.headers["x-refstore-test-admin"] = "1"

            # The helper client bypasses session_token_validator (it sets up fixtures).
            self._client.meta.events.register("before-sign.s3", _mark_admin)
        return self._client

    def make_bucket(self, name: str) -> None:
        self.client.create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region}
        )

    def upload_file(self, bucket: str, key: str, path: str | Path) -> None:
        self.client.upload_file(str(path), bucket, key)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def reset(self) -> None:
        """Wipe all moto state (all buckets, in every MotoS3Server of this process) and the log."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        self.clear_requests()

    # -- request log ---------------------------------------------------------------------------
    def _log(self, entry: S3Request) -> None:
        with self._lock:
            self._requests.append(entry)

    @property
    def requests(self) -> list[S3Request]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- client factories (they encode the options needed against this endpoint) --------------
    def obstore_store(
        self,
        bucket: str,
        *,
        prefix: str | None = None,
        session_token: str | None = None,
        **kwargs: Any,
    ) -> S3Store:
        from obstore.store import S3Store

        extra: dict[str, Any] = {"session_token": session_token} if session_token else {}
        client_options = {"allow_http": True, "timeout": "30s", "connect_timeout": "5s"}
        client_options.update(kwargs.pop("client_options", {}))
        return S3Store(
            bucket,
            prefix=prefix,
            endpoint=self.endpoint_url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            client_options=client_options,  # type: ignore[arg-type]
            **extra,
            **kwargs,
        )

    def icechunk_storage(self, bucket: str, prefix: str) -> icechunk.Storage:
        import icechunk

        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            allow_http=True,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            force_path_style=True,
        )
