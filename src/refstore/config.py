"""Configuration: a frozen :class:`Config` built from defaults < refstore.toml < env < flags.

The file's key names are a contract (other tools write them directly)::

    [dataset]
    concat_dim = "time"            # required
    loadable_variables = []        # optional override of the automatic choice
    drop_variables = []
    group = ""
    [source]
    url = "incoming/*.nc"
    [store]
    repo = "state/repo"
    ledger = "state/ledger.db"
    export = "state/export/refs.parquet"
    [maintenance]                  # optional: what `refstore gc` keeps (tags always)
    keep_last = 30                 # the newest N snapshots
    keep_days = 30                 # and every snapshot newer than this many days
    export_grace_hours = 1         # a replaced export version lives this long for readers

Remote sources and stores add keys (see the README, "Real-world use: NASA Earthdata")::

    [source]
    url = "s3://bucket/prefix/"    # or *.nc glob; region, endpoint_url, allow_http, anonymous
    dmrpp = "auto"                 # <url>.dmrpp sidecars when published (auto, never, always)
    urls_file = "granules.txt"     # HTTPS granules, one URL a line; token_env names the token
    short_name = "CCMP_WINDS_10M6HR_L4_V3.1"   # or concept_id: an Earthdata (CMR) collection
    version = "3.1"                # provider, temporal = [start, end], access = direct|external
    cmr_url = "https://cmr.earthdata.nasa.gov/search/"   # edl_url, s3_credentials_url, login
    allowed_hosts = ["archive.podaac.earthdata.nasa.gov"]  # where the login may be sent
    [store]
    repo = "s3://bucket/refs/ccmp"                   # region, endpoint_url, allow_http
    export = "s3://bucket/exports/ccmp.parquet"

Credentials are never configuration: they come from the environment, ``~/.netrc`` or the
AWS credential chain at run time and stay in memory.

Relative local paths resolve against the folder of the file (or the working directory
when there is no file). ``REFSTORE_<SECTION>_<KEY>`` environment variables override
the file, e.g. ``REFSTORE_SOURCE_URL``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refstore.errors import ConfigError
from refstore.hosts import parse_hosts

__all__ = ["DEFAULT_CONFIG_NAME", "Config", "load_config", "render_toml"]

DEFAULT_CONFIG_NAME = "refstore.toml"
EXECUTORS = ("auto", "serial", "processes", "dask")
ACCESS_MODES = ("direct", "external")
CONCAT_CHUNKS = ("auto", "regular", "rectilinear")
DMRPP_MODES = ("auto", "never", "always")  # refstore.dmrpp.MODES, without its imports
LOGIN_STRATEGIES = ("all", "environment", "token", "netrc")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one refstore run needs, already validated and with absolute paths."""

    concat_dim: str
    source_url: str
    repo: str
    ledger: str
    export: str
    loadable_variables: tuple[str, ...] | None = None
    drop_variables: tuple[str, ...] = ()
    # One group (str), or a whole hierarchy: "*" (every group) or a list (docs/layouts.md)
    group: str | tuple[str, ...] = ""
    coord_chunk: int | None = None
    concat_chunks: str = "auto"  # decided when the repository is created (docs/layouts.md)
    concat_from: str = "auto"  # a file without the concat dim: scalar, attr:NAME, filename:PAT
    cadence: str | None = None  # e.g. "6h": the expected step, for `refstore coverage`
    batch_size: int = 1000
    executor: str = "auto"
    workers: int | None = None
    dask_address: str | None = None
    commit_retries: int = 10  # commit races lost to other writers before giving up
    root: str = "."
    config_path: str | None = None
    # Remote sources (see sources/s3.py, https.py, earthdata.py). No secrets here.
    urls_file: str | None = None
    short_name: str | None = None
    concept_id: str | None = None
    version: str | None = None
    provider: str | None = None
    temporal: tuple[str, ...] | None = None
    access: str = "external"
    cmr_url: str | None = None
    edl_url: str | None = None
    s3_credentials_url: str | None = None
    login: str | None = None
    token_env: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    source_region: str | None = None
    source_endpoint_url: str | None = None
    source_allow_http: bool = False
    anonymous: bool = False
    store_region: str | None = None
    store_endpoint_url: str | None = None
    store_allow_http: bool = False
    # Retention (``refstore gc``): tags are always kept.
    keep_last: int = 30
    keep_days: float = 30.0
    export_grace_hours: float = 1.0
    dmrpp: str = "auto"  # build manifests from <url>.dmrpp sidecars: auto | never | always
    rescan_hours: float = 24.0  # local folder: stat every file at least this often

    def __post_init__(self) -> None:
        if not self.concat_dim:
            raise ConfigError(
                "[dataset] concat_dim is required.",
                'Add `concat_dim = "time"` (the dimension granules stack along) to [dataset].',
            )
        if not (self.source_url or self.urls_file or self.short_name or self.concept_id):
            raise ConfigError(
                "[source] url is required.",
                'Add `url = "incoming/*.nc"` (a folder, glob or s3:// prefix) to [source], '
                "or urls_file, short_name or concept_id for HTTPS and Earthdata granules.",
            )
        if self.access not in ACCESS_MODES:
            raise ConfigError(
                f"[source] access must be direct or external, got {self.access!r}.",
                'Use access = "direct" in AWS us-west-2, "external" (HTTPS) anywhere else.',
            )
        if self.login is not None and self.login not in LOGIN_STRATEGIES:
            raise ConfigError(
                f"[source] login must be one of {', '.join(LOGIN_STRATEGIES)}; got {self.login!r}.",
                'Leave login unset (= "all": token, then environment, then ~/.netrc).',
            )
        if self.temporal is not None and len(self.temporal) not in (1, 2):
            raise ConfigError(
                f"[source] temporal must be [start, end], got {list(self.temporal)!r}.",
                'Use e.g. temporal = ["2024-01-01", "2024-12-31"] ("" or no end: open).',
            )
        # Normalized once ("host" -> "https://host"), so every comparison is exact.
        object.__setattr__(self, "allowed_hosts", parse_hosts(self.allowed_hosts))
        if self.dmrpp not in DMRPP_MODES:
            raise ConfigError(
                f"[source] dmrpp must be one of {', '.join(DMRPP_MODES)}; got {self.dmrpp!r}.",
                'Use dmrpp = "auto" (a granule\'s <url>.dmrpp sidecar when published, else the '
                'file), "never" or "always".',
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"[sync] batch_size must be at least 1, got {self.batch_size}.",
                "Set batch_size to the number of granules per commit, e.g. 1000.",
            )
        if self.rescan_hours < 0:
            raise ConfigError(
                f"[source] rescan_hours must not be negative, got {self.rescan_hours}.",
                "Use rescan_hours = 24 (a full listing daily) or 0 (every sync).",
            )
        if self.commit_retries < 0:
            raise ConfigError(
                f"[sync] commit_retries must not be negative, got {self.commit_retries}.",
                "Set commit_retries to how many lost commit races to retry, e.g. 10.",
            )
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"[sync] executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}.",
                'Use executor = "auto" unless you need a specific one.',
            )
        if self.concat_chunks not in CONCAT_CHUNKS:
            raise ConfigError(
                f"[dataset] concat_chunks must be one of {', '.join(CONCAT_CHUNKS)}; "
                f"got {self.concat_chunks!r}.",
                'Use concat_chunks = "auto" (rectilinear only when granule lengths differ).',
            )
        from refstore.hierarchy import parse_groups

        object.__setattr__(self, "group", parse_groups(self.group))  # raises ConfigError
        from refstore.concat_from import parse_concat_from

        parse_concat_from(self.concat_from)  # raises ConfigError naming the choices
        kind = self.concat_from.partition(":")[0]
        if self.hierarchy and (kind not in ("auto", "arrival", "var") or self.dmrpp == "always"):
            raise ConfigError(
                f"[dataset] group = {self.group_key} (a whole hierarchy) works with "
                'concat_from = "auto", "arrival" or "var:NAME" and [source] dmrpp = "auto" '
                'or "never"; '
                f"got concat_from = {self.concat_from!r}, dmrpp = {self.dmrpp!r}.",
                "Use one group per store for one-step files or sidecar-only granules "
                "(docs/layouts.md, Whole hierarchies).",
            )
        if self.keep_last < 1 or self.keep_days < 0 or self.export_grace_hours < 0:
            raise ConfigError(
                f"[maintenance] keep_last must be at least 1 and keep_days, "
                f"export_grace_hours not negative (got {self.keep_last}, {self.keep_days}, "
                f"{self.export_grace_hours}).",
                "Use e.g. keep_last = 30, keep_days = 30, export_grace_hours = 1.",
            )
        if self.coord_chunk is not None and self.coord_chunk < 1:
            raise ConfigError(
                f"[dataset] coord_chunk must be positive, got {self.coord_chunk}.",
                "Leave coord_chunk unset to let refstore choose about a year of steps.",
            )

    @property
    def hierarchy(self) -> tuple[str, ...]:
        """The groups kept as one hierarchy: ``("*",)`` for every group, the listed
        ones, or ``()`` for a store of one group (:attr:`single_group`)."""
        if isinstance(self.group, tuple):
            return self.group
        return ("*",) if self.group == "*" else ()

    @property
    def single_group(self) -> str:
        """The one group a store of one group serves ("" for the root or a hierarchy)."""
        return "" if self.hierarchy or isinstance(self.group, tuple) else self.group

    @property
    def group_key(self) -> str:
        """The group setting as text, for the settings' fingerprint."""
        return self.group if isinstance(self.group, str) else "[" + ",".join(self.group) + "]"

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)


# (section, key) -> (Config field, type). The type drives parsing of env strings.
_SCHEMA: dict[tuple[str, str], tuple[str, type]] = {
    ("dataset", "concat_dim"): ("concat_dim", str),
    ("dataset", "loadable_variables"): ("loadable_variables", list),
    ("dataset", "drop_variables"): ("drop_variables", list),
    ("dataset", "group"): ("group", object),  # a name, "*" or a list of names
    ("dataset", "coord_chunk"): ("coord_chunk", int),
    ("dataset", "concat_chunks"): ("concat_chunks", str),
    ("dataset", "concat_from"): ("concat_from", str),
    ("dataset", "cadence"): ("cadence", str),
    ("source", "url"): ("source_url", str),
    ("source", "urls_file"): ("urls_file", str),
    ("source", "short_name"): ("short_name", str),
    ("source", "concept_id"): ("concept_id", str),
    ("source", "version"): ("version", str),
    ("source", "provider"): ("provider", str),
    ("source", "temporal"): ("temporal", list),
    ("source", "access"): ("access", str),
    ("source", "cmr_url"): ("cmr_url", str),
    ("source", "edl_url"): ("edl_url", str),
    ("source", "s3_credentials_url"): ("s3_credentials_url", str),
    ("source", "login"): ("login", str),
    ("source", "token_env"): ("token_env", str),
    ("source", "allowed_hosts"): ("allowed_hosts", list),
    ("source", "region"): ("source_region", str),
    ("source", "endpoint_url"): ("source_endpoint_url", str),
    ("source", "allow_http"): ("source_allow_http", bool),
    ("source", "anonymous"): ("anonymous", bool),
    ("source", "dmrpp"): ("dmrpp", str),
    ("source", "rescan_hours"): ("rescan_hours", float),
    ("store", "repo"): ("repo", str),
    ("store", "ledger"): ("ledger", str),
    ("store", "export"): ("export", str),
    ("store", "region"): ("store_region", str),
    ("store", "endpoint_url"): ("store_endpoint_url", str),
    ("store", "allow_http"): ("store_allow_http", bool),
    ("sync", "batch_size"): ("batch_size", int),
    ("sync", "executor"): ("executor", str),
    ("sync", "workers"): ("workers", int),
    ("sync", "dask_address"): ("dask_address", str),
    ("sync", "commit_retries"): ("commit_retries", int),
    ("maintenance", "keep_last"): ("keep_last", int),
    ("maintenance", "keep_days"): ("keep_days", float),
    ("maintenance", "export_grace_hours"): ("export_grace_hours", float),
}
_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_DEFAULTS: dict[str, Any] = {
    "repo": "state/repo",
    "ledger": "state/ledger.db",
    "export": "state/export/refs.parquet",
}
_PATH_FIELDS = ("source_url", "repo", "ledger", "export", "urls_file")


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _resolve(value: str, root: Path) -> str:
    if _is_remote(value):
        return value
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    path = Path(os.path.expanduser(value))
    # abspath, not resolve(): the export path is a symlink that must not be followed.
    return os.path.normpath(path if path.is_absolute() else root / path)


def _coerce(field: str, kind: type, value: Any, origin: str) -> Any:
    try:
        if kind is object:  # text, or a list of texts (env: "a,b")
            if isinstance(value, str) and "," not in value:
                return value
            return _coerce(field, list, value, origin)
        if kind is list:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
        if kind is int:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            # Environment variables arrive as text.
            text = str(value).strip().lower()
            if text not in _BOOL_TEXT:
                raise ValueError
            return _BOOL_TEXT[text]
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: {field} must be {kind.__name__}, got {value!r}.",
            "Fix the value's type in refstore.toml or the environment.",
        ) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"No configuration file at {path}.",
            "Run `refstore init --source <folder-or-glob>` to write one, or pass --config.",
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}.", "Fix the syntax error.") from e
    values: dict[str, Any] = {}
    known_sections = {s for s, _ in _SCHEMA}
    for section, table in data.items():
        if section not in known_sections or not isinstance(table, dict):
            raise ConfigError(
                f"{path}: unknown section [{section}].",
                f"Use only the sections {', '.join(sorted(known_sections))}.",
            )
        for key, value in table.items():
            if (section, key) not in _SCHEMA:
                known = sorted(k for s, k in _SCHEMA if s == section)
                raise ConfigError(
                    f"{path}: unknown key {key!r} in [{section}].",
                    f"Keys allowed in [{section}]: {', '.join(known)}.",
                )
            field, kind = _SCHEMA[(section, key)]
            values[field] = _coerce(field, kind, value, str(path))
    return values


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for (section, key), (field, kind) in _SCHEMA.items():
        name = f"REFSTORE_{section.upper()}_{key.upper()}"
        if name in environ and environ[name] != "":
            values[field] = _coerce(field, kind, environ[name], name)
    return values


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a :class:`Config` from a file, the environment and explicit overrides.

    Parameters
    ----------
    path
        A ``refstore.toml``. ``None`` looks for one in the working directory and works
        without a file if the required settings come from ``overrides``/``environ``.
    overrides
        Values from command-line flags, keyed by :class:`Config` field name; ``None``
        values are ignored.
    environ
        The environment to read ``REFSTORE_*`` variables from (default ``os.environ``).

    Raises
    ------
    ConfigError
        Unknown key, wrong type, missing required setting or unreadable file.
    """
    environ = os.environ if environ is None else environ
    if path is None and "REFSTORE_CONFIG" in environ:
        path = environ["REFSTORE_CONFIG"]
    values: dict[str, Any] = dict(_DEFAULTS)
    root = Path.cwd()
    config_path: Path | None = None
    if path is not None:
        config_path = Path(path).expanduser().resolve()
        root = config_path.parent
        values.update(_read_file(config_path))
    elif (Path.cwd() / DEFAULT_CONFIG_NAME).is_file():
        config_path = Path.cwd() / DEFAULT_CONFIG_NAME
        values.update(_read_file(config_path))
    env = _read_env(environ)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if config_path is None and not env and not given:
        raise ConfigError(
            f"No {DEFAULT_CONFIG_NAME} here ({Path.cwd()}).",
            "Run `refstore init --source FOLDER` to write one, or pass --config PATH.",
        )
    values.update(env)
    values.update(given)
    values.setdefault("concat_dim", "")
    values.setdefault("source_url", "")
    for name in _PATH_FIELDS:
        if values.get(name):
            values[name] = _resolve(values[name], root)
    if values.get("loadable_variables") is not None:
        values["loadable_variables"] = tuple(values["loadable_variables"])
    if values.get("allowed_hosts") is not None:
        values["allowed_hosts"] = tuple(values["allowed_hosts"])
    if values.get("temporal") is not None:
        values["temporal"] = tuple(values["temporal"])
    unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(
            f"Unknown setting(s): {', '.join(sorted(unknown))}.",
            "Check the spelling of the flag or setting.",
        )
    return Config(**values, root=str(root), config_path=str(config_path) if config_path else None)


def render_toml(
    *,
    source_url: str,
    concat_dim: str = "time",
    repo: str = _DEFAULTS["repo"],
    ledger: str = _DEFAULTS["ledger"],
    export: str = _DEFAULTS["export"],
    loadable_variables: tuple[str, ...] | None = None,
    drop_variables: tuple[str, ...] = (),
    group: str | tuple[str, ...] = "",
    concat_from: str = "auto",
) -> str:
    """Render a ``refstore.toml`` with the contract key names (used by ``refstore init``)."""

    def s(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def lst(vs: tuple[str, ...]) -> str:
        return "[" + ", ".join(s(v) for v in vs) + "]"

    lines = [
        "[dataset]",
        f"concat_dim = {s(concat_dim)}",
    ]
    if loadable_variables is not None:
        lines.append(f"loadable_variables = {lst(loadable_variables)}")
    else:
        lines.append("# loadable_variables = []  # default: chosen automatically")
    lines += [
        f"drop_variables = {lst(drop_variables)}",
        f"group = {s(group) if isinstance(group, str) else lst(group)}",
        *([f"concat_from = {s(concat_from)}"] if concat_from != "auto" else []),
        "",
        "[source]",
        f"url = {s(source_url)}",
        "",
        "[store]",
        f"repo = {s(repo)}",
        f"ledger = {s(ledger)}",
        f"export = {s(export)}",
        "",
    ]
    return "\n".join(lines)
