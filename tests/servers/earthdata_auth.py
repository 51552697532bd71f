"""SIMULATED Earthdata Login + DAAC ``/s3credentials`` endpoint on loopback.

This is the only simulated piece of the test servers: NASA Earthdata Login (URS OAuth, cookies,
EULAs) cannot run offline, so this server merely mimics the *contract* a client sees:

- ``GET /s3credentials`` -> ``{"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}``
  like the DAAC endpoints (e.g. ``https://archive.podaac.earthdata.nasa.gov/s3credentials``).
  ``expiration`` uses the real format ``"2021-03-26 21:08:40+00:00"`` (whole seconds, so a
  ``lifetime`` of 2 s yields credentials valid for 1-2 s). The keys are the fixed moto fakes (moto
  accepts any signature); every call issues a fresh ``sessionToken``. If ``bearer_token`` is set,
  a request without ``Authorization: Bearer <token>`` gets ``401``.
- ``POST /api/users/find_or_create_token`` (HTTP Basic ``username``/``password``) ->
  ``{"access_token", "token_type": "Bearer", "expiration_date"}`` as EDL's token API does.
- ``GET /profile`` checks a bearer token: ``200 {"uid": username}`` or ``401``.

Expiry is enforced where it matters: pass :meth:`EarthdataAuthServer.is_session_token_valid` as
``MotoS3Server(session_token_validator=...)`` and S3 requests signed with an expired (or unknown)
session token fail with S3's ``400 ExpiredToken``, so a test can make credentials expire mid-sync.
Note ``earthaccess.get_s3_credentials`` refuses non-``https`` endpoints: clients under test must
fetch ``s3credentials_url`` themselves (or through an injectable credential provider).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from ._base import LoopbackHTTPServer, QuietHandler
from .s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY

__all__ = ["EarthdataAuthServer", "IssuedCredentials"]


@dataclass(frozen=True)
class IssuedCredentials:
    session_token: str
    issued_at: datetime
    expires_at: datetime


class _AuthHandler(QuietHandler):
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._handle()

    def _handle(self) -> None:
        srv: EarthdataAuthServer = self.owner
        path = urlsplit(self.path).path
        srv._count(path)
        if self.apply_faults() is not None:
            return
        route = (self.command, path)
        if route == ("GET", "/s3credentials"):
            if srv.bearer_token is not None and not self._bearer_ok(srv.bearer_token):
                self._unauthorized()
                return
            self._json(200, srv._issue())
        elif route == ("POST", "/api/users/find_or_create_token"):
            expected = f"{srv.username}:{srv.password}".encode()
            header = self.headers.get("Authorization", "")
            given = header.removeprefix("Basic ").strip()
            try:
                ok = header.startswith("Basic ") and base64.b64decode(given) == expected
            except ValueError:
                ok = False
            if not ok:
                self._unauthorized('Basic realm="Please enter your Earthdata Login credentials"')
                return
            expires = datetime.now(UTC) + timedelta(days=60)
            self._json(
                200,
                {
                    "access_token": srv.access_token,
                    "token_type": "Bearer",
                    "expiration_date": expires.strftime("%m/%d/%Y"),
                },
            )
        elif route == ("GET", "/profile"):
            if not self._bearer_ok(srv.access_token):
                self._unauthorized()
                return
            self._json(200, {"uid": srv.username})
        else:
            self._json(404, {"error": f"no route {self.command} {path}"})

    def _bearer_ok(self, token: str) -> bool:
        given = self.headers.get("Authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _unauthorized(self, challenge: str = 'Bearer realm="refstore-test"') -> None:
        body = json.dumps({"error": "invalid_token"}).encode()
        self.send_body(401, body, "application/json", {"WWW-Authenticate": challenge})

    def _json(self, status: int, payload: object) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json")


class EarthdataAuthServer(LoopbackHTTPServer):
    """Simulated EDL token API + ``/s3credentials`` (see the module docstring)."""

    handler_class = _AuthHandler

    def __init__(
        self,
        *,
        lifetime: float = 3600.0,
        bearer_token: str | None = None,
        username: str = "refstore-test",
        password: str = "refstore-test-password",
        access_key_id: str = ACCESS_KEY_ID,
        secret_access_key: str = SECRET_ACCESS_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = 30.0,
    ) -> None:
        super().__init__(host=host, port=port, request_timeout=request_timeout)
        self.lifetime = lifetime
        #: required on /s3credentials when not None
        self.bearer_token = bearer_token
        #: what find_or_create_token hands out and /profile accepts
        self.access_token = bearer_token or "refstore-test-edl-token"
        self.username = username
        self.password = password
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self._lock = threading.Lock()
        self._issued: list[IssuedCredentials] = []
        self._counts: dict[str, int] = {}

    @property
    def s3credentials_url(self) -> str:
        return f"{self.base_url}/s3credentials"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/api/users/find_or_create_token"

    def _count(self, path: str) -> None:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1

    def request_count(self, path: str = "/s3credentials") -> int:
        with self._lock:
            return self._counts.get(path, 0)

    def _issue(self) -> dict[str, str]:
        now = datetime.now(UTC)
        expires = (now + timedelta(seconds=self.lifetime)).replace(microsecond=0)
        creds = IssuedCredentials(f"refstore-fake-session-{secrets.token_hex(12)}", now, expires)
        with self._lock:
            self._issued.append(creds)
        return {
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key,
            "sessionToken": creds.session_token,
            "expiration": expires.isoformat(sep=" "),
        }

    @property
    def issued(self) -> list[IssuedCredentials]:
        with self._lock:
            return list(self._issued)

    @property
    def issued_count(self) -> int:
        """How many times credentials were handed out."""
        with self._lock:
            return len(self._issued)

    def is_session_token_valid(self, token: str | None) -> bool:
        """True if ``token`` was issued here and has not expired (``MotoS3Server`` validator)."""
        if token is None:
            return False
        now = datetime.now(UTC)
        with self._lock:
            return any(c.session_token == token and now < c.expires_at for c in self._issued)

    def expire_all(self) -> None:
        """Make every credential issued so far expire now."""
        now = datetime.now(UTC)
        with self._lock:
            self._issued = [
                IssuedCredentials(c.session_token, c.issued_at, min(c.expires_at, now))
                for c in self._issued
            ]
