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

__all__ = ["DEFAULT_CONFIG_NAME", "Config", "load_config", "render_toml"]

DEFAULT_CONFIG_NAME = "refstore.toml"
EXECUTORS = ("auto", "serial", "processes", "dask")


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
    group: str = ""
    coord_chunk: int | None = None
    batch_size: int = 1000
    executor: str = "auto"
    workers: int | None = None
    dask_address: str | None = None
    root: str = "."
    config_path: str | None = None

    def __post_init__(self) -> None:
        if not self.concat_dim:
            raise ConfigError(
                "[dataset] concat_dim is required.",
                'Add `concat_dim = "time"` (the dimension granules stack along) to [dataset].',
            )
        if not self.source_url:
            raise ConfigError(
                "[source] url is required.",
                'Add `url = "incoming/*.nc"` (a folder or glob of granules) to [source].',
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"[sync] batch_size must be at least 1, got {self.batch_size}.",
                "Set batch_size to the number of granules per commit, e.g. 1000.",
            )
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"[sync] executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}.",
                'Use executor = "auto" unless you need a specific one.',
            )
        if self.coord_chunk is not None and self.coord_chunk < 1:
            raise ConfigError(
                f"[dataset] coord_chunk must be positive, got {self.coord_chunk}.",
                "Leave coord_chunk unset to let refstore choose about a year of steps.",
            )

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)


# (section, key) -> (Config field, type). The type drives parsing of env strings.
_SCHEMA: dict[tuple[str, str], tuple[str, type]] = {
    ("dataset", "concat_dim"): ("concat_dim", str),
    ("dataset", "loadable_variables"): ("loadable_variables", list),
    ("dataset", "drop_variables"): ("drop_variables", list),
    ("dataset", "group"): ("group", str),
    ("dataset", "coord_chunk"): ("coord_chunk", int),
    ("source", "url"): ("source_url", str),
    ("store", "repo"): ("repo", str),
    ("store", "ledger"): ("ledger", str),
    ("store", "export"): ("export", str),
    ("sync", "batch_size"): ("batch_size", int),
    ("sync", "executor"): ("executor", str),
    ("sync", "workers"): ("workers", int),
    ("sync", "dask_address"): ("dask_address", str),
}
_DEFAULTS: dict[str, Any] = {
    "repo": "state/repo",
    "ledger": "state/ledger.db",
    "export": "state/export/refs.parquet",
}
_PATH_FIELDS = ("source_url", "repo", "ledger", "export")


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
    values.update(_read_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values.setdefault("concat_dim", "")
    values.setdefault("source_url", "")
    for name in _PATH_FIELDS:
        if values.get(name):
            values[name] = _resolve(values[name], root)
    if values.get("loadable_variables") is not None:
        values["loadable_variables"] = tuple(values["loadable_variables"])
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
    group: str = "",
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
        f"group = {s(group)}",
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
