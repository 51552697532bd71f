"""Earthdata login and refreshing temporary S3 credentials, kept in memory only.

- :class:`EarthdataLogin` finds an Earthdata Login (EDL) bearer token the way
  earthaccess looks for a login: a token in ``$EARTHDATA_TOKEN`` (or the variable named by
  ``[source] token_env``), ``$EARTHDATA_USERNAME``/``$EARTHDATA_PASSWORD``, or ``~/.netrc``
  (``$NETRC``) for the EDL host. A username and password are exchanged for a token with
  EDL's token API (``/api/users/find_or_create_token``). The token authorizes HTTPS
  downloads and the DAACs' ``/s3credentials`` endpoints.
- :class:`EarthdataS3Credentials` fetches the temporary S3 keys (valid one hour) from a
  DAAC's ``/s3credentials`` and refreshes them *before* they expire. One object serves
  obstore (call it: it is a ``credential_provider``) and Icechunk
  (:meth:`EarthdataS3Credentials.icechunk`: a refreshable credential for the virtual
  chunk container).

Secrets live in this process's memory only (:data:`_MEMORY`): not in the objects' state,
so pickling a source for a worker process or handing the callback to Icechunk carries
no secret; not in any ``repr``; never in the ledger, the repository, the export or logs.
HTTP calls retry transient faults (429, 5xx, connection errors) with urllib3's ``Retry``.
"""

from __future__ import annotations

import netrc
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from refstore.errors import ConfigError, SourceError

if TYPE_CHECKING:
    import requests

__all__ = [
    "DEFAULT_EDL_URL",
    "DEFAULT_TOKEN_ENV",
    "TIMEOUT",
    "EarthdataLogin",
    "EarthdataS3Credentials",
    "TemporaryS3Credentials",
    "retrying_session",
]

DEFAULT_EDL_URL = "https://urs.earthdata.nasa.gov"
DEFAULT_TOKEN_ENV = "EARTHDATA_TOKEN"
USERNAME_ENV = "EARTHDATA_USERNAME"
PASSWORD_ENV = "EARTHDATA_PASSWORD"
# Refresh this long before expiry (at most a quarter of the lifetime): S3 keys from
# /s3credentials live one hour, and a request signed with expiring keys fails with a
# 400 ExpiredToken, which no client retries.
REFRESH_MARGIN = timedelta(minutes=5)
TIMEOUT = (10.0, 60.0)  # connect, read (seconds)
_LOGIN_HINT = (
    "Set EARTHDATA_TOKEN (or the variable named by [source] token_env), or "
    "EARTHDATA_USERNAME and EARTHDATA_PASSWORD, or add `machine urs.earthdata.nasa.gov "
    "login <user> password <password>` to ~/.netrc."
)


def retrying_session() -> requests.Session:
    """A ``requests`` session that retries 429/5xx and connection errors with backoff.

    Pass ``timeout=TIMEOUT`` with each request (requests has no session-wide timeout).
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=5,
        backoff_factor=0.2,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),  # token + credential calls are safe
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass(frozen=True, slots=True, repr=False)
class TemporaryS3Credentials:
    """One set of temporary S3 keys; ``repr`` shows the expiry only."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    fetched_at: datetime

    @property
    def refresh_at(self) -> datetime:
        """When to fetch new keys: ``REFRESH_MARGIN`` (≤ ¼ of the lifetime) before expiry."""
        lifetime = self.expiration - self.fetched_at
        return self.expiration - min(REFRESH_MARGIN, lifetime / 4)

    def __repr__(self) -> str:
        return f"TemporaryS3Credentials(expiration={self.expiration.isoformat()}, secrets=***)"


@dataclass
class _Memory:
    """This process's secrets, keyed by who asked (endpoint and login), never persisted.

    Module state on purpose: Icechunk unpickles its credential callback anew for every
    session, and worker processes rebuild sources; a shared cache keeps them from asking
    ``/s3credentials`` again while the keys are still good.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: dict[tuple[str, ...], str] = field(default_factory=dict)
    s3: dict[tuple[str, ...], TemporaryS3Credentials] = field(default_factory=dict)
    fetches: dict[str, int] = field(default_factory=dict)

    def forget(self) -> None:
        with self.lock:
            self.tokens.clear()
            self.s3.clear()
            self.fetches.clear()


_MEMORY = _Memory()


@dataclass(frozen=True, slots=True)
class EarthdataLogin:
    """Where to find an Earthdata Login; holds names, never secrets.

    Parameters
    ----------
    edl_url
        The Earthdata Login server (``https://uat.urs.earthdata.nasa.gov`` for UAT).
    strategy
        ``"all"`` (token, then environment, then netrc), ``"token"``, ``"environment"``
        (token or username/password variables) or ``"netrc"``.
    token_env
        The environment variable holding an EDL token.
    """

    edl_url: str = DEFAULT_EDL_URL
    strategy: str = "all"
    token_env: str = DEFAULT_TOKEN_ENV

    @property
    def host(self) -> str:
        """The EDL host name (the ``machine`` in ``~/.netrc``)."""
        return urlsplit(self.edl_url).hostname or self.edl_url

    def _key(self) -> tuple[str, ...]:
        return (self.edl_url, self.strategy, self.token_env)

    def _find(self, environ: Mapping[str, str]) -> tuple[str, str, str] | None:
        """``("token", token, "")`` or ``("password", user, password)``; None if none."""
        token = environ.get(self.token_env, "")
        if self.strategy in ("all", "environment", "token") and token:
            return ("token", token, "")
        user, password = environ.get(USERNAME_ENV, ""), environ.get(PASSWORD_ENV, "")
        if self.strategy in ("all", "environment") and user and password:
            return ("password", user, password)
        if self.strategy in ("all", "netrc"):
            try:
                found = netrc.netrc(environ.get("NETRC") or None).authenticators(self.host)
            except (FileNotFoundError, netrc.NetrcParseError):
                found = None
            if found and found[0] and found[2]:
                return ("password", found[0], found[2])
        return None

    def describe(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Which login would be used (``"token"``, ``"environment"``, ``"netrc"``) or None.

        Looks only at names and files, never at the network.
        """
        environ = os.environ if environ is None else environ
        found = self._find(environ)
        if found is None:
            return None
        if found[0] == "token":
            return "token"
        return "environment" if environ.get(USERNAME_ENV) == found[1] else "netrc"

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """An EDL bearer token (exchanged from a username/password once per process).

        Raises
        ------
        ConfigError
            No login found, or EDL refused it.
        SourceError
            EDL could not be reached.
        """
        environ = os.environ if environ is None else environ
        found = self._find(environ)
        if found is None and self.strategy == "token":
            raise ConfigError(
                f"No token in the environment variable {self.token_env}.",
                f"Set {self.token_env} (named by [source] token_env) to the bearer token.",
            )
        if found is None:
            raise ConfigError(f"No Earthdata login found (login = {self.strategy!r}).", _LOGIN_HINT)
        kind, user, password = found
        if kind == "token":
            return user
        key = (*self._key(), user)
        with _MEMORY.lock:
            cached = _MEMORY.tokens.get(key)
        if cached is not None:
            return cached
        token = self._exchange(user, password)
        with _MEMORY.lock:
            _MEMORY.tokens[key] = token
        return token

    def _exchange(self, user: str, password: str) -> str:
        import requests

        url = f"{self.edl_url.rstrip('/')}/api/users/find_or_create_token"
        try:
            with retrying_session() as session:
                response = session.post(url, auth=(user, password), timeout=TIMEOUT)
        except requests.RequestException as e:
            raise SourceError(
                f"Cannot reach Earthdata Login at {self.edl_url}: {type(e).__name__}.",
                "Check the network and [source] edl_url, then run again.",
            ) from None
        if response.status_code in (401, 403):
            raise ConfigError(
                f"Earthdata Login at {self.edl_url} refused the username/password of "
                f"{user!r} (HTTP {response.status_code}).",
                _LOGIN_HINT,
            )
        try:
            response.raise_for_status()
            return str(response.json()["access_token"])
        except (requests.RequestException, ValueError, KeyError, TypeError):
            # The body is not quoted: it may hold a token.
            raise SourceError(
                f"Earthdata Login at {self.edl_url} gave no token (HTTP {response.status_code}).",
                "Run again later; check the EDL status page if it persists.",
            ) from None


class EarthdataS3Credentials:
    """Temporary S3 keys from a DAAC's ``/s3credentials``, refreshed before they expire.

    Call it for obstore (``S3Store(..., credential_provider=it)``); use
    :meth:`icechunk` for an Icechunk virtual chunk container. It holds the endpoint
    and the login's *names*; the keys live in :data:`_MEMORY`, so pickles and reprs
    carry no secret.

    Parameters
    ----------
    url
        The ``/s3credentials`` endpoint (e.g.
        ``https://archive.podaac.earthdata.nasa.gov/s3credentials``).
    login
        How to authorize the request (an EDL bearer token).
    """

    def __init__(self, url: str, login: EarthdataLogin | None = None) -> None:
        self.url = url
        self.login = login or EarthdataLogin()
        # obstore reads the region from a provider's ``config``; Earthdata is us-west-2.
        self.config = {"region": "us-west-2"}

    def __repr__(self) -> str:
        return f"EarthdataS3Credentials(url={self.url!r}, login={self.login!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EarthdataS3Credentials) and (self.url, self.login) == (
            other.url,
            other.login,
        )

    def __hash__(self) -> int:
        return hash((self.url, self.login))

    def _key(self) -> tuple[str, ...]:
        return (self.url, *self.login._key())

    @property
    def fetches(self) -> int:
        """How many times this process fetched keys from ``url`` (for tests and logs)."""
        with _MEMORY.lock:
            return _MEMORY.fetches.get(self.url, 0)

    def current(self) -> TemporaryS3Credentials:
        """Keys valid for a while yet: cached, or fetched when due for refresh.

        Raises
        ------
        ConfigError
            No Earthdata login, or the endpoint refused it.
        SourceError
            The endpoint could not be reached or gave no keys (after retries).
        """
        now = datetime.now(UTC)
        with _MEMORY.lock:
            cached = _MEMORY.s3.get(self._key())
        if cached is not None and now < cached.refresh_at:
            return cached
        fresh = self._fetch()
        with _MEMORY.lock:
            _MEMORY.s3[self._key()] = fresh
            _MEMORY.fetches[self.url] = _MEMORY.fetches.get(self.url, 0) + 1
        return fresh

    def _fetch(self) -> TemporaryS3Credentials:
        import requests

        token = self.login.token()
        try:
            with retrying_session() as session:
                response = session.get(
                    self.url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
                )
        except requests.RequestException as e:
            raise SourceError(
                f"Cannot fetch temporary S3 credentials from {self.url}: {type(e).__name__}.",
                "Check the network and [source] s3_credentials_url, then run again.",
            ) from None
        if response.status_code in (401, 403):
            raise ConfigError(
                f"{self.url} refused the Earthdata login (HTTP {response.status_code}).",
                "Check the login (" + _LOGIN_HINT.rstrip(".") + "), and accept the "
                "DAAC's EULA in your Earthdata profile.",
            )
        try:
            response.raise_for_status()
            data = response.json()
            fetched_at = datetime.now(UTC)
            expiration = datetime.fromisoformat(str(data["expiration"]))
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=UTC)
            return TemporaryS3Credentials(
                access_key_id=str(data["accessKeyId"]),
                secret_access_key=str(data["secretAccessKey"]),
                session_token=str(data["sessionToken"]),
                expiration=expiration,
                fetched_at=fetched_at,
            )
        except (requests.RequestException, ValueError, KeyError, TypeError):
            # The body is never quoted: it holds the keys.
            raise SourceError(
                f"{self.url} gave no temporary S3 credentials (HTTP {response.status_code}).",
                "Run again later; in-region access needs AWS us-west-2.",
            ) from None

    def __call__(self) -> dict[str, Any]:
        """obstore's credential provider protocol: an ``S3Credential`` dict."""
        c = self.current()
        return {
            "access_key_id": c.access_key_id,
            "secret_access_key": c.secret_access_key,
            "token": c.session_token,
            # Clients refresh at this time, which is before the real expiry.
            "expires_at": c.refresh_at,
        }

    def icechunk(self) -> Any:
        """Refreshable S3 credentials for an Icechunk virtual chunk container."""
        import icechunk

        return icechunk.s3_refreshable_credentials(_IcechunkCallback(self))

    def forget(self) -> None:
        """Drop this endpoint's cached keys (the next call fetches new ones)."""
        with _MEMORY.lock:
            _MEMORY.s3.pop(self._key(), None)


@dataclass(frozen=True, slots=True)
class _IcechunkCallback:
    """What Icechunk pickles and calls for keys: the provider's names, no secret."""

    provider: EarthdataS3Credentials

    def __call__(self) -> Any:
        from icechunk.credentials import S3StaticCredentials

        c = self.provider.current()
        return S3StaticCredentials(
            access_key_id=c.access_key_id,
            secret_access_key=c.secret_access_key,
            session_token=c.session_token,
            expires_after=c.refresh_at,
        )
